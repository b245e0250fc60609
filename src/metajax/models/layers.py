"""Layers shared by the backbones."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchStatNorm(nn.Module):
    """Batch normalisation with the current batch's statistics and no running averages.

    Normalises over every axis but the last (channels) with the statistics of the
    input itself, as MAML does at both meta-train and meta-test time, then applies a
    learned per-channel scale and offset.

    Attributes:
        epsilon: added to the variance.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[..., C]`` -> ``[..., C]``."""
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), x.dtype)
        channels = (1,) * (x.ndim - 1) + (x.shape[-1],)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.reshape(channels) + bias.reshape(channels)
