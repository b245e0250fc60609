"""MER, meta-experience replay (Riemer et al., 2019): Reptile across and within replayed batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import FirstOrder, inner_loop
from metajax.continual.base import apply_model, tree_lerp
from metajax.continual.buffer import ReplayBuffer
from metajax.episode import StreamBatch
from metajax.learner import Spec, register


@dataclasses.dataclass(frozen=True)
class MER:
    """Meta-experience replay (Algorithm 1 of Riemer et al., 2019).

    For every incoming example: ``batches`` times, draw ``batch_size - 1`` examples from the
    reservoir buffer and add the incoming one; take one SGD step (``lr``) per example of
    that batch (:func:`~metajax.inner_loop` with ``per_step=True``), then pull the weights
    back towards the batch's starting point, ``theta <- theta_start + beta * (theta - theta_start)``
    (within-batch Reptile). After the batches, ``theta <- theta_0 + gamma * (theta - theta_0)``
    (across-batch Reptile). The incoming example then enters the buffer. Reptile's
    interpolation makes the update favour gradient alignment between old and new
    examples, i.e. less interference. While the buffer is empty, replayed slots take no step.

    Attributes:
        model: flax module ``x -> predictions``.
        lr: SGD step size ``alpha``.
        beta: within-batch Reptile rate.
        gamma: across-batch Reptile rate.
        batches: batches per incoming example (``s``).
        batch_size: examples per batch including the incoming one (``k``).
        capacity: buffer slots.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.
    """

    model: nn.Module
    lr: float = 0.03
    beta: float = 0.1
    gamma: float = 1.0
    batches: int = 5
    batch_size: int = 10
    capacity: int = 200
    objective: Callable | None = None

    def __post_init__(self):
        for name in ("lr", "beta", "gamma"):
            check_positive(name, getattr(self, name))
        for name in ("batches", "batch_size", "capacity"):
            check_positive_int(name, getattr(self, name))

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict:
        """``{"params", "buffer"}``."""
        return {"params": self.model.init(key, x)["params"], "buffer": ReplayBuffer.create(self.capacity, x[0], y[0])}

    def predict(self, state: dict, x: jax.Array) -> jax.Array:
        """Model outputs ``[B, ...]``."""
        return apply_model(self.model, state["params"], x)

    def update(self, state: dict, batch: StreamBatch, key: jax.Array) -> tuple[dict, dict]:
        """MER on each incoming example in turn (a ``lax.scan``)."""
        objective = losses.resolve(self.objective, batch.y)
        loss, metrics = objective(self.predict(state, batch.x), batch.y)

        def weighted_loss(p, example):
            # A masked-off (empty) replay slot has weight 0, so its SGD step is zero.
            x, y, w = example
            value, aux = objective(apply_model(self.model, p, x[None]), y[None])
            return w * value, aux

        def per_example(carry, item):
            params, buffer = carry
            x, y, k = item
            k_batches, k_add = jax.random.split(k)

            def one_batch(p, kb):
                rx, ry, mask = buffer.sample(kb, max(self.batch_size - 1, 1))
                w = mask.astype(jnp.float32) if self.batch_size > 1 else jnp.zeros_like(mask, jnp.float32)
                data = (
                    jnp.concatenate([rx, x[None]]),
                    jnp.concatenate([ry, y[None]]),
                    jnp.concatenate([w, jnp.ones((1,), jnp.float32)]),
                )
                end, _ = inner_loop(weighted_loss, p, data, optax.sgd(self.lr), None, FirstOrder(), per_step=True)
                return tree_lerp(p, end, self.beta), None

            end = jax.lax.scan(one_batch, params, jax.random.split(k_batches, self.batches))[0]
            params = tree_lerp(params, end, self.gamma)
            return (params, buffer.add(x[None], y[None], k_add)), None

        keys = jax.random.split(key, batch.x.shape[0])
        params, buffer = jax.lax.scan(per_example, (state["params"], state["buffer"]), (batch.x, batch.y, keys))[0]
        return {"params": params, "buffer": buffer}, {**metrics, "loss": loss}


@register("mer", family="continual")
def _mer(spec: Spec, *, capacity: int = 200, replay_batch: int = 10) -> MER:
    """MER with SGD step ``inner_lr``, two batches of about ``replay_batch / 2`` per example (Riemer et al.)."""
    return MER(
        spec.network(spec.outputs),
        lr=spec.inner_lr,
        beta=0.1,
        gamma=1.0,
        batches=2,
        batch_size=replay_batch // 2 + 1,
        capacity=capacity,
    )
