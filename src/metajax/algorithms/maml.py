"""MAML (Finn et al., 2017), with first-order and implicit (iMAML) meta-gradients as options."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import optax

from metajax import losses
from metajax._checks import check_non_negative, check_positive, check_positive_int
from metajax.algorithms.inner import (
    FirstOrder,
    Implicit,
    MetaGradient,
    SecondOrder,
    _check_meta_gradient,
    _fit_supervised,
    _sgd_or,
    apply_model,
)
from metajax.episode import Episode
from metajax.learner import Spec, register


@dataclasses.dataclass(frozen=True)
class MAML:
    """Model-Agnostic Meta-Learning.

    The meta-parameters are the model's initial weights. On each task they are adapted
    by ``inner_steps`` updates of the inner optimizer on the support set, and the
    meta-objective is the adapted model's loss on the query set.

    Attributes:
        model: a flax module, ``model.apply({"params": p}, x) -> predictions``.
        inner_lr: step size of the inner SGD (ignored when ``inner_optimizer`` is set).
        inner_steps: inner updates during meta-training (and the default at test time).
        meta_gradient: ``SecondOrder()`` (MAML), ``FirstOrder()`` (FOMAML) or
            ``Implicit(prox, cg_steps)`` (iMAML).
        inner_optimizer: an Optax transformation for the inner loop; ``None`` is
            ``optax.sgd(inner_lr)``.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the task
            (``losses.cross_entropy`` for integer labels, ``losses.mse`` otherwise).
        remat: rematerialise inner steps in the backward pass to save memory.

    Example:
        >>> import jax, optax, metajax
        >>> task = metajax.tasks.Sinusoid(shots=5)
        >>> learner = MAML(metajax.models.MLP(), inner_lr=0.01)
        >>> ep = task.sample(jax.random.key(0), 1)
        >>> one = jax.tree.map(lambda a: a[0], ep)
        >>> params = learner.init(jax.random.key(1), one)
        >>> loss, metrics = learner.loss(params, one, jax.random.key(2))
        >>> sorted(metrics)
        ['mse']
    """

    model: nn.Module
    inner_lr: float = 0.01
    inner_steps: int = 1
    meta_gradient: MetaGradient = SecondOrder()
    inner_optimizer: optax.GradientTransformation | None = None
    objective: Callable | None = None
    remat: bool = False

    def __post_init__(self):
        check_positive("inner_lr", self.inner_lr)
        check_positive_int("inner_steps", self.inner_steps)
        _check_meta_gradient(self.meta_gradient)

    def init(self, key: jax.Array, episode: Episode) -> Any:
        """Initial meta-parameters, shaped by one (unbatched) episode."""
        return self.model.init(key, episode.support_x)["params"]

    def adapted_params(self, params: Any) -> Any:
        """Every weight adapts per task."""
        return params

    def predict(self, params: Any, x: jax.Array) -> jax.Array:
        """Model outputs for inputs ``x`` (``[examples, ...]``)."""
        return apply_model(self.model, params, x)

    def adapt(
        self, params: Any, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Any:
        """Adapted weights after ``num_steps`` (default ``inner_steps``) updates on ``support = (x, y)``."""
        del key
        return self._inner(params, support, num_steps)[0]

    def loss(self, params: Any, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Query loss of the adapted model on one task, and its metrics."""
        adapted = self.adapt(params, episode.support, key)
        return losses.resolve(self.objective, episode.query_y)(self.predict(adapted, episode.query_x), episode.query_y)

    def evaluate(self, params: Any, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """Query metrics before adaptation and after each step: arrays ``[num_steps + 1]``."""
        del key
        return self._inner(jax.lax.stop_gradient(params), episode.support, num_steps, episode.query)[1]

    def _inner(self, params, support, num_steps, query=None):
        optimizer = _sgd_or(self.inner_optimizer, self.inner_lr)
        steps = self.inner_steps if num_steps is None else num_steps
        objective = losses.resolve(self.objective, support[1])
        return _fit_supervised(
            self.predict, objective, params, support, optimizer, steps, self.meta_gradient, query, self.remat
        )


def _maml_like(
    spec: Spec, meta_gradient: MetaGradient, inner_optimizer: optax.GradientTransformation | None = None
) -> MAML:
    return MAML(
        spec.network(spec.outputs),
        inner_lr=spec.inner_lr,
        inner_steps=spec.inner_steps,
        meta_gradient=meta_gradient,
        inner_optimizer=inner_optimizer,
    )


@register("maml", family="gradient")
def _maml(spec: Spec) -> MAML:
    """Second-order MAML on ``spec.network(outputs)``."""
    return _maml_like(spec, SecondOrder())


@register("fomaml", family="gradient")
def _fomaml(spec: Spec) -> MAML:
    """First-order MAML on ``spec.network(outputs)``."""
    return _maml_like(spec, FirstOrder())


@register("imaml", family="gradient")
def _imaml(
    spec: Spec, *, prox: float = 1.0, cg_steps: int = 5, cg_damping: float = 1000.0, inner_clip: float = 100.0
) -> MAML:
    """iMAML: ``Implicit(prox, cg_steps, cg_damping)``; ``inner_clip > 0`` clips each inner gradient's global norm."""
    check_non_negative("inner_clip", inner_clip)
    inner = optax.sgd(spec.inner_lr)
    if inner_clip:
        inner = optax.chain(optax.clip_by_global_norm(inner_clip), inner)
    return _maml_like(spec, Implicit(prox, cg_steps, cg_damping), inner)
