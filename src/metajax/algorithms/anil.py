"""ANIL (Raghu et al., 2020): almost no inner loop, only the head adapts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import optax

from metajax import losses
from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import (
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
class ANIL:
    """MAML restricted to the head: the body is meta-learned but never adapted.

    Meta-parameters are ``{"body": ..., "head": ...}``. The body's features of a task's
    examples are computed once; the inner loop adapts only the head on them, which is
    what makes ANIL cheap. The meta-gradient reaches the body through the features
    (and, with ``SecondOrder()``, through the inner updates of the head).

    Attributes:
        body: flax module ``x -> features``.
        head: flax module ``features -> predictions``.
        inner_lr, inner_steps, meta_gradient, inner_optimizer, objective, remat: as in ``MAML``.

    Example:
        >>> import jax, flax.linen as nn, metajax
        >>> learner = ANIL(body=metajax.models.MLP(out=None), head=nn.Dense(1))
        >>> one = jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid().sample(jax.random.key(0), 1))
        >>> sorted(learner.init(jax.random.key(1), one))
        ['body', 'head']
    """

    body: nn.Module
    head: nn.Module
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

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"body": body weights, "head": head weights}``."""
        k_body, k_head = jax.random.split(key)
        body = self.body.init(k_body, episode.support_x)["params"]
        features = apply_model(self.body, body, episode.support_x)
        return {"body": body, "head": self.head.init(k_head, features)["params"]}

    def adapted_params(self, params: dict) -> dict:
        """Only the head adapts per task."""
        return params["head"]

    def predict(self, params: dict, x: jax.Array) -> jax.Array:
        """``head(body(x))`` with ``params = {"body", "head"}`` (adapted or not)."""
        return self._head(params["head"], self.features(params, x))

    def features(self, params: dict, x: jax.Array) -> jax.Array:
        """Body features ``[examples, ...]`` of inputs ``x``."""
        return apply_model(self.body, params["body"], x)

    def adapt(
        self, params: dict, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> dict:
        """``{"body": unchanged, "head": adapted}`` after ``num_steps`` updates of the head."""
        del key
        return {"body": params["body"], "head": self._inner(params, support, num_steps)[0]}

    def loss(self, params: dict, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Query loss of the adapted head on one task, and its metrics."""
        adapted = self.adapt(params, episode.support, key)
        return losses.resolve(self.objective, episode.query_y)(self.predict(adapted, episode.query_x), episode.query_y)

    def evaluate(self, params: dict, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """Query metrics before adaptation and after each step: arrays ``[num_steps + 1]``."""
        del key
        params = jax.lax.stop_gradient(params)
        query = (self.features(params, episode.query_x), episode.query_y)
        return self._inner(params, episode.support, num_steps, query)[1]

    def _head(self, head_params, features):
        return apply_model(self.head, head_params, features)

    def _inner(self, params, support, num_steps, query=None):
        sx, sy = support
        return _fit_supervised(
            self._head,
            losses.resolve(self.objective, sy),
            params["head"],
            (self.features(params, sx), sy),
            _sgd_or(self.inner_optimizer, self.inner_lr),
            self.inner_steps if num_steps is None else num_steps,
            self.meta_gradient,
            query,
            self.remat,
        )


@register("anil", family="gradient")
def _anil(spec: Spec) -> ANIL:
    """ANIL: ``spec.network(None)`` as body, ``spec.head(outputs)`` adapted."""
    return ANIL(spec.network(None), spec.head(spec.outputs), inner_lr=spec.inner_lr, inner_steps=spec.inner_steps)
