"""The learner contracts, as Protocols, and the one registry of learners.

Three protocols, smallest first (as optax's ``GradientTransformation`` is a pair of
functions, not a base class):

* :class:`MetaObjective`: what meta-training needs, ``init`` and the per-task ``loss``
  (and which parameters adaptation copies per task, so the library can choose how to
  batch tasks). :func:`metajax.train` takes any ``MetaObjective``.
* :class:`Learner`: a ``MetaObjective`` that also adapts, predicts and evaluates one task;
  :func:`metajax.evaluate` takes a ``Learner``.
* :class:`OnlineLearner`: learns a stream one batch at a time (the continual drivers).
* :class:`MetaUpdater`: a ``MetaObjective`` that makes the meta-update itself (ProMP takes
  several optimizer steps on one sample of trajectories); :func:`metajax.train` calls it
  instead of differentiating the mean ``loss`` for one update.

A meta-objective that follows the meta-step (MAML++) also has ``loss_at``
(:class:`StepDependent`); one with state updated without gradients (running batch-norm
statistics) has ``init_model_state`` and ``loss_and_state`` (:class:`Stateful`).

The registry maps a learner's name to a factory ``factory(spec, **options)`` that builds it
for a task kind and a network family (:class:`Spec`). The command line, the benchmark and
the contract tests all read it, so a learner is added in one place, its own module::

    @register("maml", family="gradient")
    def _maml(spec: Spec) -> MAML:
        return MAML(spec.network(spec.outputs), inner_lr=spec.inner_lr, inner_steps=spec.inner_steps)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax

from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.episode import Episode, StreamBatch

Params = Any
Metrics = dict[str, jax.Array]

KINDS = ("regression", "classification")
FAMILIES = ("gradient", "metric", "attention", "continual")


@runtime_checkable
class MetaObjective(Protocol):
    """What :func:`metajax.train` needs of a learner."""

    def init(self, key: jax.Array, episode: Episode) -> Params:
        """Meta-parameters, shaped by one unbatched episode."""
        ...

    def loss(self, params: Params, episode: Episode, key: jax.Array) -> tuple[jax.Array, Metrics]:
        """``(scalar meta-objective, scalar metrics)`` on ONE task."""
        ...

    def adapted_params(self, params: Params) -> Params:
        """The part of ``params`` that adaptation changes per task (``{}`` when none does).

        The library reads it to batch tasks: per-task convolution weights run one task at
        a time on CPU (see :func:`metajax.training.resolve_task_batching`).
        """
        ...


@runtime_checkable
class StepDependent(Protocol):
    """A meta-objective that changes with the meta-step (MAML++'s annealed loss weights and derivative order).

    :func:`metajax.train` calls ``loss_at`` with the state's step in place of ``loss``; the
    step is traced, so the schedule costs no recompilation.
    """

    def loss_at(self, params: Params, episode: Episode, key: jax.Array, step: jax.Array) -> tuple[jax.Array, Metrics]:
        """``loss`` at meta-step ``step`` (an int32 scalar, 0 for the first meta-step)."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """A meta-objective with state that meta-training updates without gradients (running batch-norm statistics).

    :func:`metajax.train` keeps the state in ``TrainState.model_state`` (checkpointed with
    the parameters) and calls ``loss_and_state`` in place of ``loss`` / ``loss_at``; the
    tasks' new states are averaged over the meta-batch (and over devices) into the next
    state, which is exact for an update affine in each task's statistics (a moving average).
    :func:`metajax.evaluate` passes the state to ``evaluate(..., model_state=...)``. A
    configuration that keeps no state has ``init_model_state`` return ``{}`` and carries nothing.
    """

    def init_model_state(self, key: jax.Array, episode: Episode) -> Any:
        """The initial state (``{}`` when none), shaped by one unbatched episode."""
        ...

    def loss_and_state(
        self, params: Params, model_state: Any, episode: Episode, key: jax.Array, step: jax.Array | None = None
    ) -> tuple[jax.Array, tuple[Metrics, Any]]:
        """``(loss, (metrics, new model_state))`` on ONE task; ``step`` as ``loss_at``'s (``None``: ``loss``'s).

        The new state carries no gradient to ``params``.
        """
        ...


@runtime_checkable
class MetaUpdater(MetaObjective, Protocol):
    """A :class:`MetaObjective` whose meta-step is its own: the trainer hands it the batch and the optimizer."""

    def meta_update(
        self, params: Params, opt_state: Any, episodes: Episode, keys: jax.Array, optimizer: Any
    ) -> tuple[Params, Any, jax.Array, Metrics]:
        """``(params, opt_state, mean loss, mean metrics)`` after meta-updating on ``episodes [tasks, ...]``.

        ``keys [tasks]`` are the tasks' PRNG keys (those ``loss`` would get); ``optimizer`` is
        the outer Optax transformation whose state is ``opt_state``.
        """
        ...


@runtime_checkable
class Learner(MetaObjective, Protocol):
    """A meta-learner: meta-trained by :func:`metajax.train`, adapted and evaluated per task."""

    def adapt(
        self, params: Params, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Any:
        """The adapted state of one task from its support set ``(x [S, ...], y [S, ...])``.

        ``num_steps`` is the number of inner steps (``None``: the learner's own); learners
        without inner steps (ProtoNet, MatchingNet) accept and ignore it.
        """
        ...

    def predict(self, adapted: Any, x: jax.Array) -> jax.Array:
        """Outputs ``[examples, ...]`` of the adapted learner for inputs ``x [examples, ...]``."""
        ...

    def evaluate(self, params: Params, episode: Episode, key: jax.Array, num_steps: int | None = None) -> Metrics:
        """Query metrics before adaptation and after each step, ``[num_steps + 1]`` (``[1]`` without steps)."""
        ...


@runtime_checkable
class OnlineLearner(Protocol):
    """A continual learner: learns a stream of :class:`~metajax.episode.StreamBatch` one at a time.

    ``objective`` is ``None`` (follow the targets: cross-entropy for labels, MSE otherwise)
    or ``(predictions, targets) -> (loss, metrics)``.
    """

    objective: Callable | None

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> Any:
        """A state pytree shaped by one example batch ``x [B, ...]``, ``y [B, ...]``."""
        ...

    def update(self, state: Any, batch: StreamBatch, key: jax.Array) -> tuple[Any, Metrics]:
        """Learn from one incoming batch."""
        ...

    def predict(self, state: Any, x: jax.Array) -> jax.Array:
        """Outputs ``[B, ...]`` for inputs ``x [B, ...]``."""
        ...


def adapts_nothing(self: Any, params: Params) -> dict:
    """``adapted_params`` of a learner that changes no weight per task (metric and in-context learners): ``{}``."""
    del self, params
    return {}


def evaluate_without_steps(
    self: Any, params: Params, episode: Episode, key: jax.Array | None, num_steps: int | None = None
) -> Metrics:
    """``evaluate`` of a learner without inner steps: ``loss``'s query metrics as arrays ``[1]``.

    ``num_steps`` is ignored. Assign it as the class's ``evaluate``, as ``adapts_nothing``
    as its ``adapted_params``.
    """
    del num_steps
    _, metrics = self.loss(jax.lax.stop_gradient(params), episode, key)
    return jax.tree.map(lambda m: m[None], metrics)


def check_conforms(value: Any, protocol: type, name: str = "learner") -> None:
    """Raise ``TypeError`` naming the missing methods unless ``value`` has every method of ``protocol``."""
    if isinstance(value, protocol):
        return
    members = [m for m in dir(protocol) if not m.startswith("_") and callable(getattr(protocol, m, None))]
    missing = [m for m in members if not hasattr(value, m)]
    raise TypeError(
        f"{name} must conform to metajax.learner.{protocol.__name__} (methods {', '.join(members)}); "
        f"{type(value).__name__} lacks {', '.join(missing)}."
    )


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a registered factory builds a learner from.

    Attributes:
        kind: ``"regression"`` or ``"classification"``, the task's kind.
        outputs: outputs of the network: the target size, or the number of ways.
        network: ``out -> flax module``; ``out=None`` gives the feature extractor (an
            embedding, ANIL's body, OML's representation), an int the whole network.
        head: ``outputs -> flax module`` on the features (ANIL's and OML's head).
        inner_lr: step size of the inner (or online) SGD.
        inner_steps: inner steps during meta-training.
    """

    kind: str
    outputs: int
    network: Callable[[int | None], nn.Module]
    head: Callable[[int], nn.Module] = nn.Dense
    inner_lr: float = 0.01
    inner_steps: int = 1

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        check_positive_int("outputs", self.outputs)
        check_positive("inner_lr", self.inner_lr)
        check_positive_int("inner_steps", self.inner_steps)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered learner.

    Attributes:
        name: the registry key (``metajax train --algo NAME``).
        family: ``"gradient"``, ``"metric"``, ``"attention"`` or ``"continual"``.
        kinds: the task kinds it supports.
        factory: ``factory(spec, **options) -> learner``.
        options: the keyword options the factory takes.
        defaults: each option's default, from the factory's signature (the command line's
            defaults are these).
    """

    name: str
    family: str
    kinds: tuple[str, ...]
    factory: Callable[..., Any]
    options: tuple[str, ...]
    defaults: dict[str, Any]


_REGISTRY: dict[str, Entry] = {}


def register(name: str, *, family: str, kinds: tuple[str, ...] = KINDS) -> Callable:
    """Decorator: register ``factory(spec, **options)`` as the learner ``name``."""
    check_choice("family", family, FAMILIES)
    for kind in kinds:
        check_choice("kinds", kind, KINDS)

    def decorate(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"a learner named {name!r} is already registered ({_REGISTRY[name].factory}).")
        params = list(inspect.signature(factory).parameters.values())[1:]
        keyword = [p for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY]
        options = tuple(p.name for p in keyword)
        _REGISTRY[name] = Entry(name, family, tuple(kinds), factory, options, {p.name: p.default for p in keyword})
        return factory

    return decorate


def names(*, family: str | None = None, kind: str | None = None) -> tuple[str, ...]:
    """Registered learner names (in registration order), optionally of one family or task kind."""
    return tuple(
        e.name
        for e in _REGISTRY.values()
        if (family is None or e.family == family) and (kind is None or kind in e.kinds)
    )


def entry(name: str) -> Entry:
    """The registry entry of ``name``; ``KeyError`` names the registered learners."""
    if name not in _REGISTRY:
        raise KeyError(f"no learner named {name!r}; registered: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def build(name: str, spec: Spec, **options: Any) -> Any:
    """The learner ``name`` for ``spec``.

    ``options`` are the factories' keyword options (e.g. ``prox`` and ``cg_steps`` of
    ``"imaml"``, ``capacity`` of ``"replay"``); those another learner takes are ignored, so
    one configuration can build every learner, and a name no factory takes is refused.

    Raises:
        KeyError: ``name`` is not registered.
        ValueError: the learner does not support ``spec.kind``, or an option is unknown.
    """
    e = entry(name)
    if spec.kind not in e.kinds:
        raise ValueError(f"learner {name!r} needs a {' or '.join(e.kinds)} task, got kind={spec.kind!r}.")
    known = {o for other in _REGISTRY.values() for o in other.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown learner options {unknown}; the registered factories take {sorted(known)}.")
    return e.factory(spec, **{k: v for k, v in options.items() if k in e.options})
