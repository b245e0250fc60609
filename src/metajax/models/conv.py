"""Convolutional backbones for few-shot image classification."""

from __future__ import annotations

import flax.linen as nn
import jax

from metajax.models.layers import BatchStatNorm


class Conv4(nn.Module):
    """The four-block convolutional network of MAML, ProtoNets and Matching Networks.

    Each block is a 3x3 convolution with ``filters`` channels, batch normalisation
    with the current batch's statistics, ReLU and either 2x2 max-pooling (``pool="max"``,
    the miniImageNet and ProtoNets variant) or a stride-2 convolution (``pool="stride"``,
    MAML's Omniglot variant). The blocks are followed by flattening and, when ``out`` is
    set, a linear classifier.

    Attributes:
        filters: channels of every block (64 for Omniglot, 32 for miniImageNet in MAML).
        out: number of output logits, or ``None`` for the flattened embedding.
        pool: ``"max"`` or ``"stride"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = Conv4(filters=8, out=5)
        >>> x = jnp.zeros((5, 28, 28, 1))
        >>> params = net.init(jax.random.key(0), x)["params"]
        >>> net.apply({"params": params}, x).shape
        (5, 5)
    """

    filters: int = 64
    out: int | None = None
    pool: str = "max"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[examples, H, W, C]`` -> ``[examples, out]`` or ``[examples, features]``."""
        if self.pool not in ("max", "stride"):
            raise ValueError(f"Conv4.pool must be 'max' or 'stride', got {self.pool!r}.")
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects inputs [examples, H, W, C], got shape {x.shape}.")
        stride = 2 if self.pool == "stride" else 1
        for _ in range(4):
            x = nn.Conv(self.filters, (3, 3), strides=stride, padding="SAME")(x)
            x = nn.relu(BatchStatNorm()(x))
            if self.pool == "max":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        if self.out is not None:
            x = nn.Dense(self.out)(x)
        return x
