"""Meta-SGD (Li et al., 2017): MAML with a learned step size for every parameter."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import (
    FirstOrder,
    SecondOrder,
    _check_meta_gradient,
    _fit_supervised,
    apply_model,
    scale_by_learned_rates,
)
from metajax.episode import Episode
from metajax.learner import Spec, register


@dataclasses.dataclass(frozen=True)
class MetaSGD:
    """Meta-SGD: meta-learns the initial weights and an elementwise inner step size.

    Meta-parameters are ``{"model": weights, "lr": step sizes}`` with one step size per
    weight, initialised to ``inner_lr``. The inner update is ``w - lr * grad``
    (``scale_by_learned_rates``), so the step sizes receive a meta-gradient under both
    ``SecondOrder()`` and ``FirstOrder()``.

    Attributes:
        model: a flax module.
        inner_lr: initial value of every step size.
        inner_steps: inner updates per task.
        meta_gradient: ``SecondOrder()`` or ``FirstOrder()``.
        objective: ``(predictions, targets) -> (loss, metrics)``.
        remat: rematerialise inner steps in the backward pass.

    Example:
        >>> import jax, metajax
        >>> learner = MetaSGD(metajax.models.MLP(), inner_lr=0.01)
        >>> one = jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid().sample(jax.random.key(0), 1))
        >>> sorted(learner.init(jax.random.key(1), one))
        ['lr', 'model']
    """

    model: nn.Module
    inner_lr: float = 0.01
    inner_steps: int = 1
    meta_gradient: SecondOrder | FirstOrder = SecondOrder()
    objective: Callable | None = None
    remat: bool = False

    def __post_init__(self):
        check_positive("inner_lr", self.inner_lr)
        check_positive_int("inner_steps", self.inner_steps)
        _check_meta_gradient(self.meta_gradient, allowed=(SecondOrder, FirstOrder))

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"model": initial weights, "lr": step sizes filled with inner_lr}``."""
        weights = self.model.init(key, episode.support_x)["params"]
        return {"model": weights, "lr": jax.tree.map(lambda w: jnp.full_like(w, self.inner_lr), weights)}

    def adapted_params(self, params: dict) -> Any:
        """The weights adapt per task; the step sizes are shared."""
        return params["model"]

    def predict(self, weights: Any, x: jax.Array) -> jax.Array:
        """Outputs of the model with (adapted) ``weights``, i.e. ``params["model"]`` or ``adapt(...)``."""
        return apply_model(self.model, weights, x)

    def adapt(
        self, params: dict, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Any:
        """Adapted weights after ``num_steps`` (default ``inner_steps``) learned-rate updates."""
        del key
        return self._inner(params, support, num_steps)[0]

    def loss(self, params: dict, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Query loss of the adapted model on one task, and its metrics."""
        adapted = self.adapt(params, episode.support, key)
        return losses.resolve(self.objective, episode.query_y)(self.predict(adapted, episode.query_x), episode.query_y)

    def evaluate(self, params: dict, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """Query metrics before adaptation and after each step: arrays ``[num_steps + 1]``."""
        del key
        return self._inner(jax.lax.stop_gradient(params), episode.support, num_steps, episode.query)[1]

    def _inner(self, params, support, num_steps, query=None):
        return _fit_supervised(
            self.predict,
            losses.resolve(self.objective, support[1]),
            params["model"],
            support,
            scale_by_learned_rates(params["lr"]),
            self.inner_steps if num_steps is None else num_steps,
            self.meta_gradient,
            query,
            self.remat,
        )


@register("metasgd", family="gradient")
def _metasgd(spec: Spec) -> MetaSGD:
    """Meta-SGD on ``spec.network(outputs)``, every step size starting at ``inner_lr``."""
    return MetaSGD(spec.network(spec.outputs), inner_lr=spec.inner_lr, inner_steps=spec.inner_steps)
