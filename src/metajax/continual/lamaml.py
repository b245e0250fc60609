"""La-MAML, look-ahead meta-learning for continual learning (Gupta, Yadav & Paull, 2020)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import (
    FirstOrder,
    MetaGradient,
    SecondOrder,
    _check_meta_gradient,
    inner_loop,
    scale_by_learned_rates,
)
from metajax.continual.base import apply_model, mixed_loss
from metajax.continual.buffer import ReplayBuffer
from metajax.episode import StreamBatch
from metajax.learner import Spec, register


@dataclasses.dataclass(frozen=True)
class LaMAML:
    """La-MAML: online MAML with learned per-parameter step sizes and a replay buffer.

    On each incoming batch: the weights take one SGD step per incoming example with the
    learned rates clipped at zero, ``max(alpha, 0)`` (the look-ahead inner loop,
    :func:`~metajax.inner_loop` with ``per_step=True``); the meta-loss is the objective of
    the look-ahead weights on the incoming batch together with ``replay_batch`` examples
    from the reservoir buffer, and its gradient (through the inner loop as
    ``meta_gradient`` says) updates first the rates, ``alpha <- alpha - alpha_lr * grad_alpha``,
    then the weights with the clipped new rates, ``theta <- theta - max(alpha, 0) * grad_theta``
    (the paper's synchronous update). The incoming examples then enter the buffer.

    Attributes:
        model: flax module ``x -> predictions``.
        alpha_init: initial value of every step size.
        alpha_lr: step size of the rates' update (``eta``).
        capacity: buffer slots.
        replay_batch: replayed examples in each meta-loss.
        meta_gradient: ``SecondOrder()`` (the paper) or ``FirstOrder()`` (drop the inner
            loop's second-order terms; the rates still get a gradient).
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.
    """

    model: nn.Module
    alpha_init: float = 0.1
    alpha_lr: float = 0.3
    capacity: int = 200
    replay_batch: int = 10
    meta_gradient: MetaGradient = SecondOrder()
    objective: Callable | None = None

    def __post_init__(self):
        check_positive("alpha_init", self.alpha_init)
        check_positive("alpha_lr", self.alpha_lr)
        check_positive_int("capacity", self.capacity)
        check_positive_int("replay_batch", self.replay_batch)
        _check_meta_gradient(self.meta_gradient, allowed=(SecondOrder, FirstOrder))

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict:
        """``{"params", "alpha", "buffer"}``."""
        params = self.model.init(key, x)["params"]
        return {
            "params": params,
            "alpha": jax.tree.map(lambda p: jnp.full_like(p, self.alpha_init), params),
            "buffer": ReplayBuffer.create(self.capacity, x[0], y[0]),
        }

    def predict(self, state: dict, x: jax.Array) -> jax.Array:
        """Model outputs ``[B, ...]``."""
        return apply_model(self.model, state["params"], x)

    def update(self, state: dict, batch: StreamBatch, key: jax.Array) -> tuple[dict, dict]:
        """One La-MAML meta-update on the incoming batch, then reservoir insertion."""
        k_replay, k_add = jax.random.split(key)
        rx, ry, mask = state["buffer"].sample(k_replay, self.replay_batch)
        objective = losses.resolve(self.objective, batch.y)

        def predict(p, x):
            return apply_model(self.model, p, x)

        def example_loss(p, xy):
            x, y = xy
            return objective(predict(p, x[None]), y[None])

        def meta_loss(params, alpha):
            rates = scale_by_learned_rates(jax.tree.map(lambda a: jnp.maximum(a, 0.0), alpha))
            fast, _ = inner_loop(
                example_loss, params, (batch.x, batch.y), rates, None, self.meta_gradient, per_step=True
            )
            return mixed_loss(objective, predict, fast, batch.x, batch.y, rx, ry, mask)

        (loss, metrics), (g_params, g_alpha) = jax.value_and_grad(meta_loss, argnums=(0, 1), has_aux=True)(
            state["params"], state["alpha"]
        )
        alpha = jax.tree.map(lambda a, g: a - self.alpha_lr * g, state["alpha"], g_alpha)
        params = jax.tree.map(lambda p, a, g: p - jnp.maximum(a, 0.0) * g, state["params"], alpha, g_params)
        buffer = state["buffer"].add(batch.x, batch.y, k_add)
        return {"params": params, "alpha": alpha, "buffer": buffer}, {**metrics, "loss": loss}


@register("lamaml", family="continual")
def _lamaml(spec: Spec, *, capacity: int = 200, replay_batch: int = 10) -> LaMAML:
    """La-MAML on ``spec.network(outputs)`` with rates starting at, and learned with step, ``inner_lr``."""
    return LaMAML(
        spec.network(spec.outputs),
        alpha_init=spec.inner_lr,
        alpha_lr=spec.inner_lr,
        capacity=capacity,
        replay_batch=replay_batch,
    )
