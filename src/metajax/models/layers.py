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
        # Low-precision inputs (bf16) are normalised in float32 and returned in their dtype;
        # the parameters are at least float32.
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        h = x.astype(dtype)
        axes = tuple(range(h.ndim - 1))
        mean = jnp.mean(h, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=axes, keepdims=True)
        scale = self.param("scale", nn.initializers.ones, (h.shape[-1],), dtype)
        bias = self.param("bias", nn.initializers.zeros, (h.shape[-1],), dtype)
        channels = (1,) * (h.ndim - 1) + (h.shape[-1],)
        out = (h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.reshape(channels) + bias.reshape(channels)
        return out.astype(x.dtype)
