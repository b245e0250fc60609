"""ResNet-12, the deeper few-shot backbone (TADAM, MetaOptNet), with the batch-norm modes of Conv4."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax.models.conv import check_impl, conv_function, max_pool
from metajax.models.layers import batch_norm, check_bn, stack_context


class ResNet12(nn.Module):
    """Four residual blocks of three 3x3 convolutions, each block followed by 2x2 max-pooling.

    Block ``i`` has ``channels[i]`` filters: conv-norm-LeakyReLU(0.1) twice, conv-norm, plus
    a 1x1 conv-norm shortcut, then LeakyReLU and max-pooling (Oreshkin et al. 2018; Lee et
    al. 2019). Normalisation follows ``bn`` as in :class:`Conv4` (default: the current
    batch's statistics, no running averages), so the network is a pure function of
    ``(params, x)``. The
    embedding is the global average of the last block, ``[examples, channels[-1]]``.
    DropBlock is not included.

    Attributes:
        channels: filters of the four blocks (default ``(64, 160, 320, 640)``).
        out: number of output logits, or ``None`` for the embedding.
        impl: ``"xla"``, ``"patches"``, ``"mixed"`` or ``None`` (the backend's default), as in :class:`Conv4`.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
        bn: the batch-normalisation mode, as :class:`Conv4`'s.
        bn_steps: inner steps with their own batch-norm weights (``bn="per_step"``).
        bn_momentum: weight of the old average in each running-average update (``bn="running"``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = ResNet12(channels=(8, 8, 8, 8), out=5)
        >>> x = jnp.zeros((2, 84, 84, 3))
        >>> net.apply(net.init(jax.random.key(0), x), x).shape
        (2, 5)
    """

    channels: Sequence[int] = (64, 160, 320, 640)
    out: int | None = None
    impl: str | None = None
    dtype: jnp.dtype | None = None
    bn: str = "transductive"
    bn_steps: int = 1
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        step: int | jax.Array = 0,
        use_running_average: bool = False,
    ) -> jax.Array:
        """``x``: ``[examples, H, W, C]`` -> ``[examples, out]`` or ``[examples, channels[-1]]``.

        ``context``, ``step`` and ``use_running_average`` as in :class:`Conv4`.
        """
        check_bn("ResNet12", self.bn, self.bn_steps, self.bn_momentum, use_running_average)
        impl = check_impl("ResNet12", self.impl)
        if x.ndim != 4:
            raise ValueError(f"ResNet12 expects inputs [examples, H, W, C], got shape {x.shape}.")
        if len(self.channels) != 4:
            raise ValueError(f"ResNet12.channels must hold 4 block widths, got {tuple(self.channels)}.")
        x, rows = stack_context("ResNet12", self.bn, x, context)
        norm = batch_norm(self.bn, self.bn_steps, self.bn_momentum)

        def conv(features, size, h):
            layer = nn.Conv(features, (size, size), padding="SAME", use_bias=False, dtype=self.dtype,
                            conv_general_dilated=conv_function(impl))  # fmt: skip
            return norm()(layer(h), context_rows=rows, step=step, use_running_average=use_running_average)

        for features in self.channels:
            h = x
            for i in range(3):
                h = conv(features, 3, h)
                if i < 2:
                    h = nn.leaky_relu(h, 0.1)
            x = nn.leaky_relu(h + conv(features, 1, x), 0.1)
            x = max_pool(impl, x)
        x = jnp.mean(x[rows:], axis=(1, 2))
        if self.out is not None:
            x = nn.Dense(self.out, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
