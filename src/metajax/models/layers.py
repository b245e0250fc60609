"""Layers shared by the backbones, and the batch-normalisation modes of Conv4 and ResNet-12."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# How a backbone's batch normalisation takes its statistics and affine weights (its ``bn``):
# "transductive": statistics of the batch being evaluated (MAML's; queries see each other);
# "support": statistics of the support set, passed as ``context``, also for the queries
# (non-transductive: each query's output depends on the support set and on itself only);
# "per_step": a scale and offset per inner step (MAML++'s BNWB), statistics of the batch;
# "running": statistics of the batch in meta-training, which also accumulates their moving
# averages (the "batch_stats" collection, not learned by gradient); at evaluation the averages
# normalise every input (non-transductive: each query's output depends on itself only).
BN_MODES = ("transductive", "support", "per_step", "running")


def channel_mean(x: jax.Array) -> jax.Array:
    """The mean of ``x [N, ..., C]`` over every axis but the last, shaped ``[1, ..., 1, C]``.

    Computed as a product with a vector of ones (``ones [M] @ x.reshape(M, C)``) rather
    than a reduction: XLA's CPU backend runs this reduction into the minor axis, and the
    reductions its gradient needs, several times slower than a matrix-vector product, and
    fuses them badly with the pooling that follows in a block (measured in
    ``docs/performance.md``). Same value up to float summation order (``HIGHEST``
    precision, so accelerators do not round the operands to bf16 or TF32).
    """
    rows = x.reshape(-1, x.shape[-1])
    total = jnp.dot(jnp.ones((rows.shape[0],), x.dtype), rows, precision=jax.lax.Precision.HIGHEST)
    return (total / rows.shape[0]).reshape((1,) * (x.ndim - 1) + (x.shape[-1],))


class BatchStatNorm(nn.Module):
    """Batch normalisation with batch statistics, and optionally their running averages.

    Normalises over every axis but the last (channels) with the statistics of the input
    itself (or of its first ``context_rows`` rows), as MAML does at both meta-train and
    meta-test time, then applies a learned per-channel scale and offset.

    With ``running``, the layer also keeps moving averages of the batch mean and (biased)
    variance, ``batch_stats/mean`` and ``batch_stats/var`` (``[C]``, float32, starting at 0
    and 1). A call with the ``"batch_stats"`` collection mutable stores
    ``momentum * average + (1 - momentum) * stop_gradient(batch statistic)`` (flax
    ``BatchNorm``'s convention); ``use_running_average=True`` normalises with the averages
    instead of the batch's, so each row's output depends on that row only.

    Attributes:
        epsilon: added to the variance.
        steps: number of (scale, offset) pairs, ``[steps, C]``; ``1`` keeps them ``[C]``.
            With more, call number ``step`` uses row ``min(step, steps - 1)`` (per inner step).
        running: keep the running averages (``bn="running"``).
        momentum: weight of the old average in each update, in ``[0, 1)``.
    """

    epsilon: float = 1e-5
    steps: int = 1
    running: bool = False
    momentum: float = 0.9

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        context_rows: int = 0,
        step: int | jax.Array = 0,
        use_running_average: bool = False,
        relu_pool: Callable[[jax.Array], jax.Array] | None = None,
    ) -> jax.Array:
        """``x``: ``[N, ..., C]`` -> ``[N, ..., C]``, or ``relu_pool(relu(norm(x)))`` when ``relu_pool`` is given.

        Statistics of ``x[:context_rows]`` when ``context_rows > 0``; the running averages
        with ``use_running_average``.

        ``relu_pool`` is a max-pooling function (``[N, H, W, C] -> [N, H', W', C]``) applied
        after the normalisation and a ReLU, computed in the other order: the per-channel
        map ``v -> a * v + bias`` is monotone, so the window maximum of ``relu(a * v + bias)``
        is ``relu(|a| * max(sign(a) * v) + bias)`` (the maximum of ``-v`` where ``a < 0``).
        Same value and gradient (to float rounding); the normalisation, ReLU and their
        gradients then run on the pooled, 4x smaller tensor (measured in
        ``docs/performance.md``, "Pooling before batch norm").
        """
        # Low-precision inputs (bf16) are normalised in float32 and returned in their dtype;
        # the parameters are at least float32.
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        h = x.astype(dtype)
        channels = (1,) * (h.ndim - 1) + (h.shape[-1],)
        if use_running_average and not self.running:
            raise ValueError("BatchStatNorm(use_running_average=True) needs running=True (the averages it keeps).")
        keeps = self.running and (use_running_average or self.is_mutable_collection("batch_stats"))
        if keeps:
            avg_mean = self.variable("batch_stats", "mean", jnp.zeros, (h.shape[-1],), jnp.float32)
            avg_var = self.variable("batch_stats", "var", jnp.ones, (h.shape[-1],), jnp.float32)
        if use_running_average:
            mean, var = (v.value.astype(dtype).reshape(channels) for v in (avg_mean, avg_var))
        else:
            ref = h[:context_rows] if context_rows else h
            mean = channel_mean(ref)
            var = channel_mean(jnp.square(ref - mean))
            if keeps and not self.is_initializing():
                for average, batch in ((avg_mean, mean), (avg_var, var)):
                    batch = jax.lax.stop_gradient(batch).reshape(-1).astype(jnp.float32)
                    average.value = self.momentum * average.value + (1 - self.momentum) * batch
        shape = (h.shape[-1],) if self.steps == 1 else (self.steps, h.shape[-1])
        scale = self.param("scale", nn.initializers.ones, shape, dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, dtype)
        if self.steps > 1:
            row = jnp.minimum(step, self.steps - 1)
            scale, bias = scale[row], bias[row]
        scale, bias = scale.reshape(channels), bias.reshape(channels)
        if relu_pool is None:
            out = (h - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        else:
            # sign(a) = sign(scale): rsqrt is positive. Multiplying by +-1 is exact, so the
            # pooled maximum is the maximum of the very values the reference normalises.
            sign = jnp.where(scale >= 0, 1.0, -1.0).astype(dtype)
            pooled = relu_pool(sign * (h - mean))
            out = nn.relu(pooled * (jax.lax.rsqrt(var + self.epsilon) * (sign * scale)) + bias)
        return out.astype(x.dtype)


def check_bn(owner: str, bn: str, bn_steps: int, bn_momentum: float = 0.9, use_running_average: bool = False) -> None:
    """Raise ``ValueError`` naming ``owner``'s field unless ``bn`` is in :data:`BN_MODES` and the rest fits it.

    ``bn_steps`` and ``bn_momentum`` are the backbone's fields, ``use_running_average`` its call's argument.
    """
    if bn not in BN_MODES:
        raise ValueError(f"{owner}.bn must be one of {', '.join(map(repr, BN_MODES))}, got {bn!r}.")
    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, int | float) or not 0 <= bn_momentum < 1:
        raise ValueError(f"{owner}.bn_momentum must be a number in [0, 1), got {bn_momentum!r}.")
    if use_running_average and bn != "running":
        raise ValueError(
            f"{owner} was called with use_running_average=True, which needs the running statistics of "
            f"bn='running'; got bn={bn!r}."
        )
    if not isinstance(bn_steps, int) or bn_steps < 1:
        raise ValueError(f"{owner}.bn_steps must be a positive integer, got {bn_steps!r}.")
    if bn_steps > 1 and bn != "per_step":
        raise ValueError(
            f"{owner}.bn_steps={bn_steps} gives affine weights per inner step, which only bn='per_step' uses; "
            f"got bn={bn!r}."
        )


def batch_norm(bn: str, bn_steps: int, bn_momentum: float) -> functools.partial:
    """A backbone's :class:`BatchStatNorm` constructor for mode ``bn`` (checked by :func:`check_bn`)."""
    return functools.partial(BatchStatNorm, steps=bn_steps, running=bn == "running", momentum=bn_momentum)


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
