"""Reptile (Nichol et al., 2018)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import FirstOrder, _fit_supervised, _sgd_or, apply_model
from metajax.episode import Episode
from metajax.learner import Spec, register


@dataclasses.dataclass(frozen=True)
class Reptile:
    """Reptile: move the initialisation towards the weights adapted on each task.

    The per-task loss is the surrogate ``0.5 * ||params - stop_gradient(adapted)||^2``,
    whose gradient is exactly Reptile's direction ``params - adapted``; averaged over a
    meta-batch and fed to ``optax.sgd(epsilon)`` it is the batched Reptile update. The
    metrics report the adapted model's query objective.

    Attributes:
        model: a flax module.
        inner_lr: step size of the inner SGD (ignored when ``inner_optimizer`` is set).
        inner_steps: inner updates per task.
        inner_optimizer: an Optax transformation; the Reptile paper uses Adam.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the task.

    Example:
        >>> import jax, jax.numpy as jnp, metajax
        >>> learner = Reptile(metajax.models.MLP(), inner_lr=0.01, inner_steps=5)
        >>> one = jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid().sample(jax.random.key(0), 1))
        >>> params = learner.init(jax.random.key(1), one)
        >>> grads = jax.grad(lambda p: learner.loss(p, one, jax.random.key(2))[0])(params)
        >>> adapted = learner.adapt(params, one.support, jax.random.key(2))
        >>> close = jax.tree.map(lambda g, p, a: bool(jnp.allclose(g, p - a)), grads, params, adapted)
        >>> all(jax.tree.leaves(close))  # the surrogate's gradient is Reptile's direction
        True
    """

    model: nn.Module
    inner_lr: float = 0.01
    inner_steps: int = 5
    inner_optimizer: optax.GradientTransformation | None = None
    objective: Callable | None = None

    def __post_init__(self):
        check_positive("inner_lr", self.inner_lr)
        check_positive_int("inner_steps", self.inner_steps)

    def init(self, key: jax.Array, episode: Episode) -> Any:
        """Initial meta-parameters, shaped by one (unbatched) episode."""
        return self.model.init(key, episode.support_x)["params"]

    def adapted_params(self, params: Any) -> Any:
        """Every weight adapts per task."""
        return params

    def predict(self, params: Any, x: jax.Array) -> jax.Array:
        """Model outputs for inputs ``x``."""
        return apply_model(self.model, params, x)

    def adapt(
        self, params: Any, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Any:
        """Weights after ``num_steps`` (default ``inner_steps``) inner updates on ``support``."""
        del key
        return self._inner(params, support, num_steps)[0]

    def loss(self, params: Any, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Reptile surrogate on one task; metrics are the adapted model's query metrics."""
        adapted = jax.lax.stop_gradient(self.adapt(params, episode.support, key))
        # An array: params have at least one leaf (``sum`` of none would be the int 0).
        surrogate = 0.5 * sum(
            jnp.sum(jnp.square(p - a)) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(adapted), strict=True)
        )
        _, metrics = losses.resolve(self.objective, episode.query_y)(
            self.predict(adapted, episode.query_x), episode.query_y
        )
        return cast(jax.Array, surrogate), metrics

    def evaluate(self, params: Any, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """Query metrics before adaptation and after each step: arrays ``[num_steps + 1]``."""
        del key
        return self._inner(params, episode.support, num_steps, episode.query)[1]

    def _inner(self, params, support, num_steps, query=None):
        optimizer = _sgd_or(self.inner_optimizer, self.inner_lr)
        steps = self.inner_steps if num_steps is None else num_steps
        objective = losses.resolve(self.objective, support[1])
        return _fit_supervised(self.predict, objective, params, support, optimizer, steps, FirstOrder(), query)


@register("reptile", family="gradient")
def _reptile(spec: Spec) -> Reptile:
    """Reptile on ``spec.network(outputs)`` with ``inner_steps`` SGD steps of ``inner_lr`` per task."""
    return Reptile(spec.network(spec.outputs), inner_lr=spec.inner_lr, inner_steps=spec.inner_steps)
