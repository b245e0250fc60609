"""La-MAML, look-ahead meta-learning for continual learning (Gupta, Yadav & Paull, 2020)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.continual.base import StreamBatch, apply_model, mixed_loss, sgd
from metajax.continual.buffer import ReplayBuffer


@dataclasses.dataclass(frozen=True)
class LaMAML:
    """La-MAML: online MAML with learned per-parameter step sizes and a replay buffer.

    On each incoming batch: the weights take one SGD step per incoming example with
    the learned rates clipped at zero, ``max(alpha, 0)`` (the look-ahead inner loop), the meta-loss is the
    objective of the look-ahead weights on the incoming batch together with
    ``replay_batch`` examples from the reservoir buffer, and its gradient (through the
    inner loop, second order unless ``first_order``) updates first the rates,
    ``alpha <- alpha - alpha_lr * grad_alpha``, then the weights with the clipped new
    rates, ``theta <- theta - max(alpha, 0) * grad_theta`` (the paper's synchronous
    update). The incoming examples then enter the buffer.

    Attributes:
        model: flax module ``x -> predictions``.
        alpha_init: initial value of every step size.
        alpha_lr: step size of the rates' update (``eta``).
        capacity: buffer slots.
        replay_batch: replayed examples in each meta-loss.
        first_order: drop second-order terms of the inner loop.
        objective: ``(predictions, targets) -> (loss, metrics)``.
    """

    model: nn.Module
    alpha_init: float = 0.1
    alpha_lr: float = 0.3
    capacity: int = 200
    replay_batch: int = 10
    first_order: bool = False
    objective: Callable = losses.cross_entropy

    def __post_init__(self):
        check_positive("alpha_init", self.alpha_init)
        check_positive("alpha_lr", self.alpha_lr)
        check_positive_int("capacity", self.capacity)
        check_positive_int("replay_batch", self.replay_batch)

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
        predict = lambda p, x: apply_model(self.model, p, x)  # noqa: E731

        def meta_loss(params, alpha):
            def inner(p, xy):
                x, y = xy
                g = jax.grad(lambda q: self.objective(predict(q, x[None]), y[None])[0])(p)
                if self.first_order:
                    g = jax.lax.stop_gradient(g)
                return sgd(p, g, jax.tree.map(lambda a: jnp.maximum(a, 0.0), alpha)), None

            fast = jax.lax.scan(inner, params, (batch.x, batch.y))[0]
            return mixed_loss(self.objective, predict, fast, batch.x, batch.y, rx, ry, mask)

        (loss, metrics), (g_params, g_alpha) = jax.value_and_grad(meta_loss, argnums=(0, 1), has_aux=True)(
            state["params"], state["alpha"]
        )
        alpha = jax.tree.map(lambda a, g: a - self.alpha_lr * g, state["alpha"], g_alpha)
        params = jax.tree.map(lambda p, a, g: p - jnp.maximum(a, 0.0) * g, state["params"], alpha, g_params)
        buffer = state["buffer"].add(batch.x, batch.y, k_add)
        return {"params": params, "alpha": alpha, "buffer": buffer}, {**metrics, "loss": loss}
