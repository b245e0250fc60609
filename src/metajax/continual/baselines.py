"""Baselines under the same stream: sequential fine-tuning, experience replay, EWC.

Joint (i.i.d.) training, the upper bound, is fine-tuning on the stream shuffled across
tasks: ``run_sequence(Finetune(...), ..., iid=True)``. Every update runs on the core
inner-loop scan (:func:`metajax.algorithms.inner.optimize`), with the optimizer state
kept from one incoming batch to the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import _sgd_or, optimize
from metajax.continual.base import apply_model, mixed_loss
from metajax.continual.buffer import ReplayBuffer
from metajax.episode import StreamBatch
from metajax.learner import Spec, register


@dataclasses.dataclass(frozen=True)
class Finetune:
    """Sequential fine-tuning: ``steps`` optimizer updates on each incoming batch, nothing else.

    The lower bound of continual learning: it forgets whatever the new data does not
    support.

    Attributes:
        model: flax module ``x -> predictions``.
        lr: SGD step size (ignored when ``optimizer`` is set).
        steps: updates per incoming batch.
        optimizer: an Optax transformation; ``None`` for ``optax.sgd(lr)``.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.

    Example:
        >>> import jax, jax.numpy as jnp, metajax
        >>> learner = Finetune(metajax.models.MLP(hidden=(8,), out=1), lr=0.1)
        >>> x, y = jnp.ones((4, 2)), jnp.ones((4, 1))
        >>> state = learner.init_state(jax.random.key(0), x, y)
        >>> batch = metajax.StreamBatch(x, y, jnp.int32(0), jnp.bool_(True))
        >>> state, m = learner.update(state, batch, jax.random.key(1))
        >>> sorted(m)
        ['loss', 'mse']
    """

    model: nn.Module
    lr: float = 0.01
    steps: int = 1
    optimizer: optax.GradientTransformation | None = None
    objective: Callable | None = None

    def __post_init__(self):
        check_positive("lr", self.lr)
        check_positive_int("steps", self.steps)

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict:
        """``{"params", "opt"}``."""
        del y
        params = self.model.init(key, x)["params"]
        return {"params": params, "opt": _sgd_or(self.optimizer, self.lr).init(params)}

    def predict(self, state: dict, x: jax.Array) -> jax.Array:
        """Model outputs ``[B, ...]``."""
        return apply_model(self.model, state["params"], x)

    def update(self, state: dict, batch: StreamBatch, key: jax.Array) -> tuple[dict, dict]:
        """``steps`` updates on ``batch``; metrics of the last one (before it)."""
        del key

        objective = losses.resolve(self.objective, batch.y)

        def loss_fn(p, _):
            loss, metrics = objective(apply_model(self.model, p, batch.x), batch.y)
            return loss, {"loss": loss, **metrics}

        opt = _sgd_or(self.optimizer, self.lr)
        params, opt_state, metrics = optimize(loss_fn, state["params"], state["opt"], opt, num_steps=self.steps)
        return {"params": params, "opt": opt_state}, metrics


@dataclasses.dataclass(frozen=True)
class ExperienceReplay:
    """Experience replay with a reservoir buffer on the device (Chaudhry et al., 2019, "tiny episodic memories").

    Each update trains on the incoming batch together with ``replay_batch`` examples drawn
    from the buffer (none while it is empty), then offers the incoming examples to the
    buffer by reservoir sampling.

    Attributes:
        model, lr, steps, optimizer, objective: as in :class:`Finetune`.
        capacity: buffer slots.
        replay_batch: replayed examples per update.
    """

    model: nn.Module
    lr: float = 0.01
    steps: int = 1
    optimizer: optax.GradientTransformation | None = None
    objective: Callable | None = None
    capacity: int = 200
    replay_batch: int = 10

    def __post_init__(self):
        check_positive("lr", self.lr)
        for name in ("steps", "capacity", "replay_batch"):
            check_positive_int(name, getattr(self, name))

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict:
        """``{"params", "opt", "buffer"}``."""
        params = self.model.init(key, x)["params"]
        return {
            "params": params,
            "opt": _sgd_or(self.optimizer, self.lr).init(params),
            "buffer": ReplayBuffer.create(self.capacity, x[0], y[0]),
        }

    def predict(self, state: dict, x: jax.Array) -> jax.Array:
        """Model outputs ``[B, ...]``."""
        return apply_model(self.model, state["params"], x)

    def update(self, state: dict, batch: StreamBatch, key: jax.Array) -> tuple[dict, dict]:
        """``steps`` updates on the batch plus replay, then reservoir insertion."""
        k_add, k_replay = jax.random.split(key)

        def predict(p, x):
            return apply_model(self.model, p, x)

        def loss_fn(p, k):
            rx, ry, mask = state["buffer"].sample(k, self.replay_batch)
            loss, metrics = mixed_loss(self.objective, predict, p, batch.x, batch.y, rx, ry, mask)
            return loss, {**metrics, "loss": loss}

        opt = _sgd_or(self.optimizer, self.lr)
        keys = jax.random.split(k_replay, self.steps)
        params, opt_state, metrics = optimize(loss_fn, state["params"], state["opt"], opt, keys)
        buffer = state["buffer"].add(batch.x, batch.y, k_add)
        return {"params": params, "opt": opt_state, "buffer": buffer}, metrics


@dataclasses.dataclass(frozen=True)
class EWC:
    """Online elastic weight consolidation (Kirkpatrick et al., 2017; online form of Schwarz et al., 2018).

    While on a task, the learner accumulates the diagonal empirical Fisher (mean squared
    per-example gradients of the objective). At each task switch (``batch.switched``) it
    consolidates: ``F <- decay * F + F_task`` and the anchor becomes the current weights.
    The loss adds ``strength / 2 * sum F (theta - anchor)^2``. ``decay = 1`` is EWC with
    one penalty per past task summed.

    Attributes:
        model, lr, steps, optimizer, objective: as in :class:`Finetune`.
        strength: ``lambda``, weight of the penalty.
        decay: ``gamma`` of online EWC.
    """

    model: nn.Module
    lr: float = 0.01
    steps: int = 1
    optimizer: optax.GradientTransformation | None = None
    objective: Callable | None = None
    strength: float = 100.0
    decay: float = 1.0

    def __post_init__(self):
        check_positive("lr", self.lr)
        check_positive("strength", self.strength)
        check_positive_int("steps", self.steps)
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {self.decay!r}.")

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict:
        """``{"params", "opt", "anchor", "fisher", "task_fisher", "task_batches"}``."""
        del y
        params = self.model.init(key, x)["params"]
        zeros = jax.tree.map(jnp.zeros_like, params)
        return {
            "params": params,
            "opt": _sgd_or(self.optimizer, self.lr).init(params),
            "anchor": params,
            "fisher": zeros,
            "task_fisher": zeros,
            "task_batches": jnp.zeros((), jnp.float32),
        }

    def predict(self, state: dict, x: jax.Array) -> jax.Array:
        """Model outputs ``[B, ...]``."""
        return apply_model(self.model, state["params"], x)

    def update(self, state: dict, batch: StreamBatch, key: jax.Array) -> tuple[dict, dict]:
        """Consolidate on a switch, then ``steps`` penalised updates; accumulate this batch's Fisher."""
        del key
        # Consolidate the finished task's Fisher when a new segment starts (not before anything was learned).
        done = batch.switched & (state["task_batches"] > 0)
        task_f = jax.tree.map(lambda f: f / jnp.maximum(state["task_batches"], 1.0), state["task_fisher"])
        fisher = jax.tree.map(lambda F, f: jnp.where(done, self.decay * F + f, F), state["fisher"], task_f)
        anchor = jax.tree.map(lambda a, p: jnp.where(done, p, a), state["anchor"], state["params"])
        task_fisher = jax.tree.map(lambda f: jnp.where(done, 0.0, f), state["task_fisher"])
        task_batches = jnp.where(done, 0.0, state["task_batches"])

        objective = losses.resolve(self.objective, batch.y)

        def loss_fn(p, _):
            loss, metrics = objective(apply_model(self.model, p, batch.x), batch.y)
            penalty = sum(
                jnp.sum(F * jnp.square(q - a))
                for F, q, a in zip(jax.tree.leaves(fisher), jax.tree.leaves(p), jax.tree.leaves(anchor), strict=True)
            )
            return loss + 0.5 * self.strength * penalty, {**metrics, "loss": loss}

        opt = _sgd_or(self.optimizer, self.lr)
        params, opt_state, metrics = optimize(loss_fn, state["params"], state["opt"], opt, num_steps=self.steps)

        def example_grad(x, y):
            return jax.grad(lambda p: objective(apply_model(self.model, p, x[None]), y[None])[0])(params)

        sq = jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), jax.vmap(example_grad)(batch.x, batch.y))
        new = {
            "params": params,
            "opt": opt_state,
            "anchor": anchor,
            "fisher": fisher,
            "task_fisher": jax.tree.map(jnp.add, task_fisher, sq),
            "task_batches": task_batches + 1.0,
        }
        return new, metrics


@register("finetune", family="continual")
def _finetune(spec: Spec) -> Finetune:
    """Sequential fine-tuning of ``spec.network(outputs)`` by SGD with step ``inner_lr``."""
    return Finetune(spec.network(spec.outputs), lr=spec.inner_lr)


@register("replay", family="continual")
def _replay(spec: Spec, *, capacity: int = 200, replay_batch: int = 10) -> ExperienceReplay:
    """Experience replay on ``spec.network(outputs)`` by SGD with step ``inner_lr``."""
    return ExperienceReplay(spec.network(spec.outputs), lr=spec.inner_lr, capacity=capacity, replay_batch=replay_batch)


@register("ewc", family="continual")
def _ewc(spec: Spec, *, strength: float = 100.0) -> EWC:
    """Online EWC on ``spec.network(outputs)`` by SGD with step ``inner_lr``."""
    return EWC(spec.network(spec.outputs), lr=spec.inner_lr, strength=strength)
