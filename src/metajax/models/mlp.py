"""Multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Fully connected network with ReLU (or ``activation``) between layers.

    Attributes:
        hidden: widths of the hidden layers, e.g. ``(40, 40)`` for MAML's sinusoid net.
        out: output width, or ``None`` to return the last hidden activation (a body
            for ANIL or a metric learner).
        dtype: computation dtype, e.g. ``jnp.bfloat16`` for mixed precision; parameters
            stay float32 and outputs are float32.
        activation: the nonlinearity after each hidden layer (``nn.tanh`` for MAML-RL's policy).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = MLP(hidden=(40, 40), out=1)
        >>> params = net.init(jax.random.key(0), jnp.zeros((10, 1)))["params"]
        >>> net.apply({"params": params}, jnp.zeros((10, 1))).shape
        (10, 1)
    """

    hidden: Sequence[int] = (40, 40)
    out: int | None = 1
    dtype: jnp.dtype | None = None
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[examples, in]`` -> ``[examples, out]`` (or ``[examples, hidden[-1]]``)."""
        for width in self.hidden:
            x = self.activation(nn.Dense(width, dtype=self.dtype)(x))
        if self.out is not None:
            x = nn.Dense(self.out, dtype=self.dtype)(x)
        return x.astype(jnp.float32) if self.dtype is not None else x
