"""Layers shared by the backbones, and the batch-normalisation modes of Conv4 and ResNet-12."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# How a backbone's batch normalisation takes its statistics and affine weights (its ``bn``):
# "transductive": statistics of the batch being evaluated (MAML's; queries see each other);
# "support": statistics of the support set, passed as ``context``, also for the queries
# (non-transductive: each query's output depends on the support set and on itself only);
# "per_step": a scale and offset per inner step (MAML++'s BNWB), statistics of the batch.
BN_MODES = ("transductive", "support", "per_step")


class BatchStatNorm(nn.Module):
    """Batch normalisation with batch statistics and no running averages.

    Normalises over every axis but the last (channels) with the statistics of the input
    itself (or of its first ``context_rows`` rows), as MAML does at both meta-train and
    meta-test time, then applies a learned per-channel scale and offset.

    Attributes:
        epsilon: added to the variance.
        steps: number of (scale, offset) pairs, ``[steps, C]``; ``1`` keeps them ``[C]``.
            With more, call number ``step`` uses row ``min(step, steps - 1)`` (per inner step).
    """

    epsilon: float = 1e-5
    steps: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, context_rows: int = 0, step: int | jax.Array = 0) -> jax.Array:
        """``x``: ``[N, ..., C]`` -> ``[N, ..., C]``; statistics of ``x[:context_rows]`` when ``context_rows > 0``."""
        # Low-precision inputs (bf16) are normalised in float32 and returned in their dtype;
        # the parameters are at least float32.
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        h = x.astype(dtype)
        axes = tuple(range(h.ndim - 1))
        ref = h[:context_rows] if context_rows else h
        mean = jnp.mean(ref, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(ref - mean), axis=axes, keepdims=True)
        shape = (h.shape[-1],) if self.steps == 1 else (self.steps, h.shape[-1])
        scale = self.param("scale", nn.initializers.ones, shape, dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, dtype)
        if self.steps > 1:
            row = jnp.minimum(step, self.steps - 1)
            scale, bias = scale[row], bias[row]
        channels = (1,) * (h.ndim - 1) + (h.shape[-1],)
        out = (h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.reshape(channels) + bias.reshape(channels)
        return out.astype(x.dtype)


def check_bn(owner: str, bn: str, bn_steps: int) -> None:
    """Raise ``ValueError`` naming ``owner``'s field unless ``bn`` is in :data:`BN_MODES` and ``bn_steps`` fits it."""
    if bn not in BN_MODES:
        raise ValueError(f"{owner}.bn must be one of {', '.join(map(repr, BN_MODES))}, got {bn!r}.")
    if not isinstance(bn_steps, int) or bn_steps < 1:
        raise ValueError(f"{owner}.bn_steps must be a positive integer, got {bn_steps!r}.")
    if bn_steps > 1 and bn != "per_step":
        raise ValueError(
            f"{owner}.bn_steps={bn_steps} gives affine weights per inner step, which only bn='per_step' uses; "
            f"got bn={bn!r}."
        )


def stack_context(owner: str, bn: str, x: jax.Array, context: jax.Array | None) -> tuple[jax.Array, int]:
    """``(rows to evaluate, context_rows)``: ``concat([context, x])`` and ``len(context)``, or ``(x, 0)``.

    The backbone normalises every batch-norm layer with the statistics of the first
    ``context_rows`` rows and returns the rows after them.
    """
    if context is None:
        return x, 0
    if bn != "support":
        raise ValueError(
            f"{owner} was given a context (support inputs for the batch statistics), which only bn='support' "
            f"uses; got bn={bn!r}."
        )
    if context.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"{owner}'s context must be inputs like x, [examples, {', '.join(map(str, x.shape[1:]))}], "
            f"got shape {context.shape}."
        )
    return jnp.concatenate([context.astype(x.dtype), x]), context.shape[0]
