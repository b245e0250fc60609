"""MAML (Finn et al., 2017), with first-order and implicit (iMAML) meta-gradients and MAML++'s options.

MAML++ (Antoniou et al., 2019, "How to train your MAML") is MAML with four options,
registered as ``"maml++"``: learned per-layer per-step inner learning rates (LSLR,
``learned_rates``), the multi-step loss with annealed importance weights (MSL,
``msl_epochs``, :func:`msl_weights`), first-order meta-gradients for the first epochs
(derivative-order annealing, ``first_order_epochs``) and, outside the learner, cosine
annealing of the meta learning rate (``optax.cosine_decay_schedule``). Its per-step
batch-norm weights (BNWB) are a mode of the model (``Conv4(bn="per_step", bn_steps=...)``).

With a model whose batch norm keeps running statistics (``bn="running"``), MAML carries
them as its :class:`~metajax.learner.Stateful` state: meta-training normalises with batch statistics and
updates the running averages from each task's query pass through its adapted weights
(a forward pass under ``stop_gradient``, so no statistic carries a meta-gradient);
``evaluate``, ``adapt`` and ``predict`` then normalise every input, support and query,
with the averages they are given (``model_state``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metajax import losses
from metajax._checks import check_non_negative, check_positive, check_positive_int
from metajax.algorithms.inner import (
    FirstOrder,
    Implicit,
    MetaGradient,
    SecondOrder,
    _check_meta_gradient,
    _sgd_or,
    apply_model,
    inner_loop,
    scale_by_learned_rates,
)
from metajax.episode import Episode
from metajax.learner import Spec, register


def msl_weights(num_steps: int, epoch: jax.Array | int, msl_epochs: int) -> jax.Array:
    """MAML++'s importance ``[num_steps]`` of each inner step's query loss at ``epoch``.

    The schedule of the paper's reference implementation (``get_per_step_loss_importance_vector``
    in AntreasAntoniou/HowToTrainYourMAMLPytorch, ``few_shot_learning_system.py``): every
    step starts at ``1/N``; each epoch the first ``N - 1`` weights fall by
    ``1 / (N * msl_epochs)`` down to ``0.03 / N`` and the last one rises by ``N - 1`` times
    that, up to ``1 - (N - 1) * 0.03 / N``. From epoch ``msl_epochs`` on, only the last
    step's loss counts (weights ``[0, ..., 0, 1]``), as the reference then stops using MSL.

    Args:
        num_steps: ``N``, the inner steps.
        epoch: the (integer) epoch, a traced scalar under ``jit``.
        msl_epochs: epochs of the multi-step loss, > 0.

    Example:
        >>> [round(float(w), 4) for w in msl_weights(5, 0, 20)]
        [0.2, 0.2, 0.2, 0.2, 0.2]
        >>> [round(float(w), 4) for w in msl_weights(5, 10, 20)]
        [0.1, 0.1, 0.1, 0.1, 0.6]
    """
    check_positive_int("num_steps", num_steps)
    check_positive_int("msl_epochs", msl_epochs)
    n = num_steps
    epoch = jnp.asarray(epoch, jnp.float32)
    decay, floor = 1.0 / n / msl_epochs, 0.03 / n
    early = jnp.maximum(1.0 / n - epoch * decay, floor)
    last = jnp.minimum(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    annealed = jnp.concatenate([jnp.full((n - 1,), early), last[None]])
    return jnp.where(epoch < msl_epochs, annealed, jnp.zeros(n).at[-1].set(1.0))


class Adapted(NamedTuple):
    """MAML's adapted state when the model's batch norm is not transductive.

    Attributes:
        weights: the adapted weights.
        context: the support inputs whose statistics normalise predictions (``bn="support"``).
        step: the batch-norm row of the last inner step (``bn="per_step"``), int32 scalar.
        stats: the running statistics that normalise predictions (``bn="running"``), or ``None``.
    """

    weights: Any
    context: jax.Array
    step: jax.Array
    stats: Any = None


def bn_mode(model: nn.Module) -> str:
    """The batch-normalisation mode of ``model`` (its ``bn``; ``"transductive"`` for a model without one)."""
    return getattr(model, "bn", "transductive")


@dataclasses.dataclass(frozen=True)
class MAML:
    """Model-Agnostic Meta-Learning, and MAML++ with its options.

    The meta-parameters are the model's initial weights. On each task they are adapted
    by ``inner_steps`` updates of the inner optimizer on the support set, and the
    meta-objective is the adapted model's loss on the query set.

    With ``learned_rates`` the meta-parameters are ``{"model": weights, "lr": rates}``,
    one rate per parameter tensor and inner step (``[inner_steps]``, initialised to
    ``inner_lr``). With ``msl_epochs`` the meta-objective is the sum of the query losses
    after every step, weighted by :func:`msl_weights`; with ``first_order_epochs`` it is
    differentiated to first order for that many epochs. Both depend on the meta-step,
    which :func:`metajax.train` passes to :meth:`loss_at`; :meth:`loss` is the objective
    after them (the final step's loss, ``meta_gradient``). An epoch is ``epoch_steps``
    meta-steps.

    Attributes:
        model: a flax module, ``model.apply({"params": p}, x) -> predictions``; its
            batch-norm mode (``bn`` of ``Conv4`` / ``ResNet12``) decides which inputs
            normalise the queries and whether each inner step has its own BN weights.
        inner_lr: step size of the inner SGD (ignored when ``inner_optimizer`` is set);
            with ``learned_rates``, the rates' initial value.
        inner_steps: inner updates during meta-training (and the default at test time).
        meta_gradient: ``SecondOrder()`` (MAML), ``FirstOrder()`` (FOMAML) or
            ``Implicit(prox, cg_steps)`` (iMAML).
        inner_optimizer: an Optax transformation for the inner loop; ``None`` is
            ``optax.sgd(inner_lr)``.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the task
            (``losses.cross_entropy`` for integer labels, ``losses.mse`` otherwise).
        remat: rematerialise inner steps in the backward pass to save memory.
        learned_rates: MAML++'s LSLR.
        msl_epochs: epochs of MAML++'s multi-step loss (0: off).
        first_order_epochs: epochs of first-order meta-gradients before ``meta_gradient``
            (0: off); the reference's ``first_order_to_second_order_epoch`` plus one.
        epoch_steps: meta-steps per epoch of the two schedules (the reference's 500).

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
    learned_rates: bool = False
    msl_epochs: int = 0
    first_order_epochs: int = 0
    epoch_steps: int = 500

    def __post_init__(self):
        check_positive("inner_lr", self.inner_lr)
        check_positive_int("inner_steps", self.inner_steps)
        _check_meta_gradient(self.meta_gradient)
        check_positive_int("msl_epochs", self.msl_epochs, allow_zero=True)
        check_positive_int("first_order_epochs", self.first_order_epochs, allow_zero=True)
        check_positive_int("epoch_steps", self.epoch_steps)
        if self.learned_rates and self.inner_optimizer is not None:
            raise ValueError(
                "learned_rates=True makes the inner optimizer the learned per-step rates; "
                f"inner_optimizer must be None, got {self.inner_optimizer!r}."
            )
        stepwise = {
            "learned_rates": self.learned_rates,
            "msl_epochs": self.msl_epochs,
            "first_order_epochs": self.first_order_epochs,
            "a model with bn='per_step'": bn_mode(self.model) == "per_step",
        }
        used = [name for name, on in stepwise.items() if on]
        if used and isinstance(self.meta_gradient, Implicit):
            raise ValueError(
                f"{used[0]} needs the inner steps on the tape; meta_gradient must be SecondOrder() or FirstOrder(), "
                "got Implicit()."
            )
        if self.first_order_epochs and not isinstance(self.meta_gradient, SecondOrder):
            raise ValueError(
                f"first_order_epochs={self.first_order_epochs} anneals FirstOrder() into SecondOrder(); "
                f"meta_gradient must be SecondOrder(), got {self.meta_gradient!r}."
            )

    def init(self, key: jax.Array, episode: Episode) -> Any:
        """Initial meta-parameters, shaped by one (unbatched) episode.

        The model's weights, or ``{"model": weights, "lr": rates [inner_steps] per tensor}``
        with ``learned_rates``.
        """
        weights = self.model.init(key, episode.support_x)["params"]
        if not self.learned_rates:
            return weights
        return {
            "model": weights,
            "lr": jax.tree.map(lambda w: jnp.full((self.inner_steps,), self.inner_lr, w.dtype), weights),
        }

    def adapted_params(self, params: Any) -> Any:
        """Every weight adapts per task (the learned rates are shared)."""
        return params["model"] if self.learned_rates else params

    def init_model_state(self, key: jax.Array, episode: Episode) -> dict:
        """``{"batch_stats": running averages}`` of a ``bn="running"`` model (means 0, variances 1), else ``{}``."""
        if bn_mode(self.model) != "running":
            return {}
        return {"batch_stats": self.model.init(key, episode.support_x)["batch_stats"]}

    def predict(self, adapted: Any, x: jax.Array) -> jax.Array:
        """Model outputs for inputs ``x`` (``[examples, ...]``) with weights, or an :class:`Adapted` from ``adapt``."""
        if isinstance(adapted, Adapted):
            return self._forward(adapted.weights, x, adapted.step, adapted.context, adapted.stats)
        return self._forward(adapted, x)

    def adapt(
        self,
        params: Any,
        support: tuple[jax.Array, jax.Array],
        key: jax.Array,
        num_steps: int | None = None,
        model_state: dict | None = None,
    ) -> Any:
        """Adapted weights after ``num_steps`` (default ``inner_steps``) updates on ``support = (x, y)``.

        An :class:`Adapted` (weights, support inputs, last step's batch-norm row, running
        statistics) when the model's batch norm is not transductive. ``model_state``: the
        running statistics of ``bn="running"`` (``TrainState.model_state``), required there.
        """
        del key
        stats = self._running(model_state)
        steps = self.inner_steps if num_steps is None else num_steps
        weights = self._inner(params, support, steps, self.meta_gradient, stats=stats)[0]
        if bn_mode(self.model) == "transductive":
            return weights
        return Adapted(weights, support[0], jnp.int32(max(steps - 1, 0)), stats)

    def loss(self, params: Any, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Query loss of the adapted model on one task, and its metrics (after MAML++'s schedules)."""
        return self._scheduled(params, episode, key, None)[0]

    def loss_at(self, params: Any, episode: Episode, key: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        """:meth:`loss` at meta-step ``step`` (a traced int): MSL weights and derivative order of its epoch.

        Both orders are branches of one ``lax.cond``, so the meta-step compiles once.
        """
        return self._scheduled(params, episode, key, step)[0]

    def loss_and_state(
        self, params: Any, model_state: dict, episode: Episode, key: jax.Array, step: jax.Array | None = None
    ) -> tuple[jax.Array, tuple[dict, dict]]:
        """``(loss, (metrics, model_state))``: :meth:`loss` (:meth:`loss_at` ``step``) and the new running statistics.

        With ``bn="running"`` the statistics are the moving averages updated by the query
        pass through the adapted weights (under ``stop_gradient``); otherwise ``model_state``
        comes back as given (``{}``).
        """
        (value, metrics), adapted = self._scheduled(params, episode, key, step)
        if bn_mode(self.model) != "running":
            return value, (metrics, model_state)
        variables = {"params": jax.lax.stop_gradient(adapted), **model_state}
        _, updated = self.model.apply(variables, episode.query_x, mutable=["batch_stats"])
        return value, (metrics, dict(updated))

    def evaluate(
        self,
        params: Any,
        episode: Episode,
        key: jax.Array,
        num_steps: int | None = None,
        model_state: dict | None = None,
    ) -> dict:
        """Query metrics before adaptation and after each step: arrays ``[num_steps + 1]``.

        ``model_state``: the running statistics of ``bn="running"``, required there (as :meth:`adapt`'s).
        """
        del key
        stats = self._running(model_state)
        steps = self.inner_steps if num_steps is None else num_steps
        params = jax.lax.stop_gradient(params)
        return self._inner(params, episode.support, steps, self.meta_gradient, episode.query, stats=stats)[1][1]

    def _running(self, model_state: dict | None) -> dict | None:
        """The running statistics that normalise at evaluation: ``model_state`` with ``bn="running"``, else ``None``."""
        mode = bn_mode(self.model)
        if mode == "running" and not model_state:
            raise ValueError(
                "MAML's model has bn='running', whose statistics from meta-training normalise at evaluation: pass "
                f"model_state=TrainState.model_state ({{'batch_stats': ...}}), got {model_state!r}."
            )
        if mode != "running" and model_state:
            raise ValueError(
                f"model_state holds running statistics, which only a model with bn='running' uses; got bn={mode!r}."
            )
        return model_state if mode == "running" else None

    def _scheduled(self, params, episode, key, step):
        """``((loss, metrics), adapted weights)`` at meta-step ``step`` (``None``: after the schedules)."""
        if step is None:
            return self._loss(self.meta_gradient, params, episode, key, None)
        epoch = step // self.epoch_steps
        weights = msl_weights(self.inner_steps, epoch, self.msl_epochs) if self.msl_epochs else None
        if not self.first_order_epochs:
            return self._loss(self.meta_gradient, params, episode, key, weights)
        first, final = (functools.partial(self._loss, order) for order in (FirstOrder(), self.meta_gradient))
        return jax.lax.cond(epoch < self.first_order_epochs, first, final, params, episode, key, weights)

    def _loss(self, meta_gradient, params, episode, key, step_weights):
        """``((query objective, metrics), adapted weights)`` of one task.

        With ``step_weights [inner_steps]`` the objective is their sum over every step's query loss.
        """
        del key
        if step_weights is None:
            adapted = self._inner(params, episode.support, self.inner_steps, meta_gradient)[0]
            row = max(self.inner_steps - 1, 0)
            predictions = self._forward(adapted, episode.query_x, row, episode.support_x)
            return losses.resolve(self.objective, episode.query_y)(predictions, episode.query_y), adapted
        adapted, (step_losses, metrics) = self._inner(
            params, episode.support, self.inner_steps, meta_gradient, episode.query, every_step=True
        )
        return (jnp.sum(step_weights * step_losses[1:]), jax.tree.map(lambda m: m[-1], metrics)), adapted

    def _forward(self, weights, x, step=0, context=None, stats=None):
        """The model on ``x``; ``step``: per-step BN weights; ``context``, ``stats``: support, running statistics."""
        mode = bn_mode(self.model)
        if mode == "per_step":
            return apply_model(self.model, weights, x, step=step)
        if mode == "support" and context is not None:
            return apply_model(self.model, weights, x, context=context)
        if mode == "running" and stats is not None:
            return apply_model(self.model, weights, x, stats, use_running_average=True)
        return apply_model(self.model, weights, x)

    def _inner(self, params, support, steps, meta_gradient, query=None, every_step=False, stats=None):
        """``(adapted weights, tracked)``; with ``query``, tracked is ``(losses, metrics)``, each ``[steps + 1]``.

        Inner step ``k`` (0-based) uses batch-norm row ``k``, and so do the query
        predictions after it (as the reference); the predictions before any step use row 0.
        ``every_step`` keeps each step's query loss on the tape (the multi-step loss).
        ``stats``: running statistics that normalise every forward pass (``bn="running"`` at evaluation).
        """
        sx, sy = support
        objective = losses.resolve(self.objective, sy)
        if self.learned_rates:
            weights, optimizer = params["model"], scale_by_learned_rates(params["lr"], per_step=True)
        else:
            weights, optimizer = params, _sgd_or(self.inner_optimizer, self.inner_lr)
        per_step = bn_mode(self.model) == "per_step"
        if per_step:  # the step number travels with each step's support data
            data: Any = (jnp.arange(steps), *(jnp.broadcast_to(a, (steps, *a.shape)) for a in support))

            def loss_fn(w, d):
                return objective(self._forward(w, d[1], d[0]), d[2])
        else:
            data = (*support, stats)  # the statistics travel as data: loss_fn closes over no traced array

            def loss_fn(w, d):
                return objective(self._forward(w, d[0], stats=d[2]), d[1])

        track = None
        if query is not None:
            qx, qy = query

            def at(w, row):
                return objective(self._forward(w, qx, row, sx, stats), qy)

            # Per-step BN needs each step's row: keep the weights of every step, then evaluate them.
            track = (lambda w: w) if per_step or every_step else functools.partial(at, row=0)
        adapted, tracked = inner_loop(
            loss_fn, weights, data, optimizer, steps, meta_gradient, per_step=per_step, track=track, remat=self.remat
        )
        if query is not None and (per_step or every_step):
            tracked = jax.vmap(at)(tracked, jnp.maximum(jnp.arange(steps + 1) - 1, 0))
        return adapted, tracked


def _maml_like(
    spec: Spec, meta_gradient: MetaGradient, inner_optimizer: optax.GradientTransformation | None = None, **options
) -> MAML:
    return MAML(
        spec.network(spec.outputs),
        inner_lr=spec.inner_lr,
        inner_steps=spec.inner_steps,
        meta_gradient=meta_gradient,
        inner_optimizer=inner_optimizer,
        **options,
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
    spec: Spec,
    *,
    prox: float = Implicit.prox,
    cg_steps: int = Implicit.cg_steps,
    cg_damping: float = Implicit.damping,
    inner_clip: float = 100.0,
) -> MAML:
    """iMAML: ``Implicit(prox, cg_steps, cg_damping)`` (its defaults); ``inner_clip > 0`` clips each inner gradient."""
    check_non_negative("cg_damping", cg_damping)  # named as the option, before Implicit names its own field
    check_non_negative("inner_clip", inner_clip)
    inner = optax.sgd(spec.inner_lr)
    if inner_clip:
        inner = optax.chain(optax.clip_by_global_norm(inner_clip), inner)
    return _maml_like(spec, Implicit(prox, cg_steps, cg_damping), inner)


@register("maml++", family="gradient")
def _mamlpp(spec: Spec, *, msl_epochs: int = 20, first_order_epochs: int = 0, epoch_steps: int = 500) -> MAML:
    """MAML++: second-order MAML with LSLR, the multi-step loss and derivative-order annealing.

    The defaults are the reference's Omniglot configuration (MSL for 20 epochs of 500
    meta-steps; ``first_order_to_second_order_epoch: -1``, i.e. second order throughout).
    Per-step batch-norm weights come with the network (``--bn-mode per_step``).
    """
    return _maml_like(
        spec,
        SecondOrder(),
        learned_rates=True,
        msl_epochs=msl_epochs,
        first_order_epochs=first_order_epochs,
        epoch_steps=epoch_steps,
    )
