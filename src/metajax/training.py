"""The meta-training loop: one jitted meta-step over a batch of tasks, Optax outside.

The trainer knows only the learner contract (:class:`~metajax.learner.MetaObjective`:
``init``, ``loss``, ``adapted_params``) and the task contracts: a distribution's
``sample``, drawn inside the step, or an :class:`~metajax.tasks.base.EpisodeFeed`'s
batches (a host pipeline), passed into it and assembled there; it imports no learner.
The same step runs on one device or with the tasks sharded over a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metajax._checks import check_choice, check_positive, check_positive_int
from metajax._tree import is_array, partition
from metajax.distributed import TASK_AXIS, replicate, shard_tasks
from metajax.episode import Episode, validate_episode
from metajax.learner import MetaObjective, MetaUpdater, Stateful, StepDependent, check_conforms
from metajax.tasks.base import EpisodeFeed, TaskDistribution

if TYPE_CHECKING:  # orbax is imported only by runs that checkpoint
    from metajax.checkpoint import Checkpointer

TASK_BATCHING = ("vmap", "map")
_ADVICE = "Lower the inner or outer learning rate, or clip gradients (optax.clip_by_global_norm)."


class DivergenceError(FloatingPointError):
    """Meta-training diverged at ``step``: a non-finite loss or state, or a loss above the :class:`Divergence` bound.

    Nothing from the diverged dispatch is checkpointed: the newest checkpoint is the last
    finite state.

    Attributes:
        step: the first meta-step (1-based count) whose loss or state failed the check.
        loss: that meta-step's loss.
        rule: which check failed, in words (``"non-finite loss"``, ``"non-finite state"`` or
            the :class:`Divergence` bound).
    """

    def __init__(self, message: str, *, step: int, loss: float, rule: str):
        super().__init__(message)
        self.step, self.loss, self.rule = step, loss, rule


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The rule by which :func:`train` stops a run whose loss blew up while staying finite.

    Once ``warmup`` history entries are logged, a meta-step whose loss exceeds ``factor``
    times the median of the logged losses so far (each entry's mean over its interval) raises
    :class:`DivergenceError`. The median moves only when an entry is logged, so the check
    costs nothing per step; it applies only while the median is positive (MSE,
    cross-entropy), not to objectives that may be negative.

    Attributes:
        factor: how many times the median a loss may reach, > 1.
        warmup: history entries logged before the rule applies, >= 1.

    Example:
        >>> Divergence(factor=100.0).threshold([0.5, 0.3, 0.4])
        40.0
    """

    factor: float = 1e3
    warmup: int = 2

    def __post_init__(self):
        check_positive("factor", self.factor)
        if not self.factor > 1:
            raise ValueError(f"factor must be above 1 (a multiple of the median loss), got {self.factor!r}.")
        check_positive_int("warmup", self.warmup)

    def threshold(self, logged: list[float]) -> float:
        """The bound on the next losses given the ``logged`` ones: ``factor * median``, or ``inf`` if none."""
        median = float(np.median(logged)) if len(logged) >= self.warmup else 0.0
        return self.factor * median if median > 0 else float("inf")


def resolve_divergence(divergence: Divergence | float | None) -> Divergence | None:
    """``divergence`` as a :class:`Divergence` (a number is its ``factor``), or ``None`` (no rule)."""
    if divergence is None or isinstance(divergence, Divergence):
        return divergence
    if isinstance(divergence, bool) or not isinstance(divergence, int | float):
        raise TypeError(f"divergence must be a metajax.training.Divergence, a factor or None, got {divergence!r}.")
    return Divergence(factor=float(divergence))


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: meta-parameters, optimizer state, PRNG key, step, model state.

    Attributes:
        step: number of meta-steps taken, int32 scalar.
        params: the learner's meta-parameters.
        opt_state: the Optax optimizer state.
        key: raw PRNG key (``uint32[2]``) from which the next meta-step draws.
        model_state: what meta-training updates without gradients, e.g. running batch-norm
            statistics ``{"batch_stats": ...}`` of a :class:`~metajax.learner.Stateful`
            learner; ``{}`` (no arrays) for every other learner.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array
    model_state: Any = struct.field(default_factory=dict)


def first_episode(task: TaskDistribution | EpisodeFeed, key: jax.Array) -> Episode:
    """One unbatched episode of ``task`` (of a feed: its first, without advancing it), to shape parameters."""
    batch = task.assemble(task.example(), key) if isinstance(task, EpisodeFeed) else task.sample(key, 1)
    return jax.tree.map(lambda a: a[0], batch)


def init_state(
    learner: MetaObjective,
    task: TaskDistribution | EpisodeFeed,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
) -> TrainState:
    """Initial meta-parameters, optimizer state and (of a :class:`~metajax.learner.Stateful` learner) model state.

    The learner is checked against the :class:`~metajax.learner.MetaObjective` protocol
    and the task's first episode with :func:`~metajax.episode.validate_episode`, once,
    outside ``jit``.

    Args:
        learner: a :class:`~metajax.learner.MetaObjective` (any learner).
        task: the task distribution (or :class:`~metajax.tasks.base.EpisodeFeed`) whose
            episodes shape the parameters.
        optimizer: the outer (meta) optimizer.
        key: PRNG key; the same key gives the same run.
    """
    check_conforms(learner, MetaObjective)
    k_init, k_episode, k_run = jax.random.split(key, 3)
    episode = first_episode(task, k_episode)
    validate_episode(episode, batched=False, name="the task's episode")
    params = learner.init(k_init, episode)
    model_state = learner.init_model_state(k_init, episode) if isinstance(learner, Stateful) else {}
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), _raw_key(k_run), model_state)


def _raw_key(key: jax.Array) -> jax.Array:
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def resolve_task_batching(
    learner: MetaObjective, task: TaskDistribution | EpisodeFeed, task_batching: str | None = None
) -> str:
    """How to batch ``learner``'s tasks on this backend: ``task_batching``, or the measured choice when ``None``.

    The choice is one half of the per-backend switch; the other is Conv4's ``impl=None``
    (``metajax.models.conv.default_conv_impl``: ``"patches"`` on CPU, ``"xla"`` elsewhere).
    ``vmap`` of a convolution whose weights differ per task (MAML's adapted Conv4) becomes
    a grouped convolution, which XLA's CPU backend runs very slowly; ``lax.map`` runs one
    task at a time instead. The learner declares what adapts per task
    (:meth:`~metajax.learner.MetaObjective.adapted_params`); a 4-D kernel among those
    parameters is a per-task convolution. Measured on 2 busy CPU cores (load 2-5), Conv4-64
    5-way 1-shot 5 queries, meta-batch 32, 1 inner step, tasks/s (``scripts/benchmark.py
    --workload maml-omniglot --task-batching vmap,map --conv-impl xla,patches``)::

                        xla conv   patches
        first  / vmap      1.2       42.3
        first  / map       6.7       45.7
        second / vmap      0.9       28.5
        second / map       4.3       35.9

    So on CPU, learners with per-task convolution weights use ``"map"``; everything else,
    and every accelerator, uses ``"vmap"``. See ``docs/performance.md``.
    """
    if task_batching is not None:
        check_choice("task_batching", task_batching, TASK_BATCHING)
        return task_batching
    shapes = jax.eval_shape(lambda k: learner.init(k, first_episode(task, k)), jax.random.key(0))
    per_task_conv = any(leaf.ndim == 4 for leaf in jax.tree.leaves(learner.adapted_params(shapes)))
    return "map" if per_task_conv and jax.default_backend() == "cpu" else "vmap"


def task_loss(learner: MetaObjective, step: jax.Array | None = None, model_state: Any = None) -> Callable:
    """``(params, episode, key) -> (loss, metrics)`` of one task at meta-step ``step``.

    A learner whose objective follows the meta-step (:class:`~metajax.learner.StepDependent`,
    e.g. MAML++'s annealed schedules) is given ``step`` (a traced int32 scalar); otherwise,
    or with ``step=None``, this is ``learner.loss``. With a ``model_state`` (of a
    :class:`~metajax.learner.Stateful` learner) it is ``learner.loss_and_state`` on that
    state, whose auxiliary output is ``(metrics, new model_state)``.
    """
    if model_state is not None:
        if not isinstance(learner, Stateful):
            raise TypeError(
                f"model_state is given, but {type(learner).__name__} keeps no state "
                "(metajax.learner.Stateful: init_model_state, loss_and_state); pass model_state=None."
            )
        with_state = learner.loss_and_state
        return lambda params, episode, key: with_state(params, model_state, episode, key, step)
    if step is not None and isinstance(learner, StepDependent):
        return functools.partial(learner.loss_at, step=step)
    return learner.loss


def batch_value_and_grad(
    learner: MetaObjective,
    params: Any,
    episodes: Episode,
    keys: jax.Array,
    task_batching: str = "vmap",
    step: jax.Array | None = None,
    model_state: Any = None,
) -> tuple[tuple[jax.Array, Any], Any]:
    """``((mean loss, mean metrics), gradient of the mean loss)`` over a batch of tasks.

    ``"vmap"`` differentiates the mean of the vmapped ``learner.loss``. ``"map"`` runs one
    task at a time (a ``lax.scan``) and differentiates inside it, accumulating the sum of
    the per-task gradients, as a PyTorch loop over tasks does: the backward pass needs only
    one task's activations at a time, instead of the residuals of every task that the
    gradient of a ``lax.map`` keeps. ``step`` is the meta-step and ``model_state`` a
    :class:`~metajax.learner.Stateful` learner's state, for :func:`task_loss`; with a
    state, the mean metrics are ``(mean metrics, mean of the tasks' new states)``.
    """
    loss = task_loss(learner, step, model_state)
    if task_batching == "vmap":

        def batch_loss(params):
            losses, aux = jax.vmap(loss, in_axes=(None, 0, 0))(params, episodes, keys)
            return jnp.mean(losses), jax.tree.map(lambda a: jnp.mean(a, axis=0), aux)

        return jax.value_and_grad(batch_loss, has_aux=True)(params)
    one = jax.value_and_grad(loss, has_aux=True)

    def add(total, episode_key):
        value_grad = one(params, *episode_key)
        return jax.tree.map(jnp.add, total, value_grad), None

    first = jax.tree.map(lambda a: a[0], (episodes, keys))
    rest = jax.tree.map(lambda a: a[1:], (episodes, keys))
    total, _ = jax.lax.scan(add, one(params, *first), rest)
    n = keys.shape[0]
    return jax.tree.map(lambda t: t / n, total)


def meta_step(
    learner: MetaObjective,
    task: TaskDistribution | Callable[[Any, jax.Array], Episode],
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    task_batching: str = "vmap",
    *,
    mesh: Mesh | None = None,
    axis_name: str = TASK_AXIS,
) -> Callable[..., tuple[TrainState, dict]]:
    """The un-jitted meta-step ``(state, batch=None) -> (state, metrics)``.

    Draws ``meta_batch`` episodes from the state's key (``task.sample``) or, when ``task``
    is an :class:`~metajax.tasks.base.EpisodeFeed`'s ``assemble``, makes them from the fed
    ``batch`` with a key drawn as ``sample``'s would be; then evaluates ``learner.loss`` (or
    ``loss_at`` the state's step, :func:`task_loss`) on each task (``vmap`` over tasks, or
    ``lax.map`` with ``task_batching="map"``), averages, differentiates and applies one
    ``optimizer`` update; a :class:`~metajax.learner.MetaUpdater` makes the update itself
    from the episodes. ``metrics`` holds the mean ``loss`` and the mean of every metric the
    learner returns. A :class:`~metajax.learner.Stateful` learner's ``model_state`` becomes
    the mean of the tasks' new states (``loss_and_state``).

    With a ``mesh``, the tasks are split over its ``axis_name`` devices: each device
    evaluates ``meta_batch / devices`` of the same episodes the single-device step draws,
    and the mean loss, metrics, new model state and gradient are averaged over devices
    (``lax.pmean``) before the update, which every device applies to its replica of the
    parameters.
    """
    check_positive_int("meta_batch", meta_batch)
    check_choice("task_batching", task_batching, TASK_BATCHING)
    updater = learner if isinstance(learner, MetaUpdater) else None
    stateful = isinstance(learner, Stateful)
    if updater is not None and (mesh is not None or task_batching != "vmap"):
        raise ValueError(
            f"{type(learner).__name__} makes its own meta-update, with its tasks vmapped on one device: it takes "
            f"task_batching='vmap' and no mesh, got task_batching={task_batching!r} and mesh={mesh}."
        )
    if mesh is None:

        def value_and_grad(params, model_state, episodes, keys, step):
            return batch_value_and_grad(learner, params, episodes, keys, task_batching, step, model_state)

    else:
        value_and_grad = _sharded_value_and_grad(learner, meta_batch, mesh, task_batching, axis_name)

    def step(state: TrainState, batch: Any = None) -> tuple[TrainState, dict]:
        key, k_tasks, k_loss = jax.random.split(jax.random.wrap_key_data(state.key), 3)
        if batch is None:
            episodes = cast(TaskDistribution, task).sample(k_tasks, meta_batch)
        else:
            episodes = cast(Callable[[Any, jax.Array], Episode], task)(batch, k_tasks)
        keys = jax.random.split(k_loss, meta_batch)
        if updater is not None:
            params, opt_state, loss, metrics = updater.meta_update(
                state.params, state.opt_state, episodes, keys, optimizer
            )
        model_state = state.model_state
        if updater is None:
            (loss, aux), grads = value_and_grad(
                state.params, model_state if stateful else None, episodes, keys, state.step
            )
            metrics, model_state = aux if stateful else (aux, model_state)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, key=jax.random.key_data(key))
        new = new.replace(model_state=model_state)
        return new, {"loss": loss, **metrics}

    return step


def _sharded_value_and_grad(learner, meta_batch: int, mesh: Mesh, task_batching: str, axis_name: str) -> Callable:
    """:func:`batch_value_and_grad` with the tasks split over ``mesh``'s ``axis_name`` and the results averaged."""
    devices = mesh.shape[axis_name]
    if meta_batch % devices:
        raise ValueError(
            f"meta_batch must be a multiple of the {devices} devices on mesh axis {axis_name!r} "
            f"(each takes an equal share of the tasks), got meta_batch={meta_batch}."
        )

    def local(params, model_state, episodes, keys, step):
        # Mark the replicated parameters as varying over the task axis: a gradient with
        # respect to a device-invariant value would be summed over devices (its transpose
        # is a psum), which would mix the tasks of all devices into every inner step.
        params = jax.lax.pcast(params, axis_name, to="varying")
        keys = jax.random.wrap_key_data(keys)
        # Equal shares, so the mean of the devices' means is the mean over all tasks
        # (of the new model states too).
        value_grad = batch_value_and_grad(learner, params, episodes, keys, task_batching, step, model_state)
        return jax.lax.pmean(value_grad, axis_name)

    specs = (P(), P(), P(axis_name), P(axis_name), P())
    sharded = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())

    def value_and_grad(params, model_state, episodes, keys, step):
        return sharded(params, model_state, episodes, jax.random.key_data(keys), step)  # raw keys split by task

    return value_and_grad


class TrainStep:
    """The compiled meta-step program :func:`make_train_step` builds: ``(state, batches=None) -> (state, metrics)``.

    Attributes:
        jitted: the ``jax.jit`` function ``(state, task_arrays, batches=None) -> (state, metrics)``;
            ``jitted.lower(state, task_arrays)`` gives its cost and memory analyses.
        task_arrays: the task's arrays (a dataset), passed as arguments rather than
            embedded in the program (replicated over the mesh, if any).
        task_batching: the resolved task batching, ``"vmap"`` or ``"map"``.
    """

    def __init__(self, jitted: jax.stages.Wrapped, task_arrays: Any, task_batching: str, steps_per_call: int):
        self.jitted, self.task_arrays, self.task_batching = jitted, task_arrays, task_batching
        self.steps_per_call = steps_per_call

    def __call__(self, state: TrainState, batches: tuple | None = None) -> tuple[TrainState, dict]:
        """Run the steps on ``state`` (its buffers are donated); ``batches``: an episode feed's, one per step."""
        if batches is not None and len(batches) != self.steps_per_call:
            raise ValueError(
                f"batches must hold one fed batch per meta-step, {self.steps_per_call}; got {len(batches)}."
            )
        return self.jitted(state, self.task_arrays, batches)


def make_train_step(
    learner: MetaObjective,
    task: TaskDistribution | EpisodeFeed,
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    steps_per_call: int = 1,
    task_batching: str | None = None,
    *,
    mesh: Mesh | None = None,
    axis_name: str = TASK_AXIS,
) -> TrainStep:
    """A jitted function running ``steps_per_call`` meta-steps in one dispatch.

    The steps are a ``lax.scan``, so tiny problems (sinusoid) are not bound by Python
    dispatch. The input state's buffers are donated; a task's arrays (a dataset) are
    passed as arguments, not embedded in the program. Metrics come back stacked:
    ``[steps_per_call]`` per metric, with ``state_finite`` (bool): whether the parameters,
    optimizer state and model state after each step are all finite, one fused reduction on the device
    that :func:`train` reads with the losses, so no non-finite state reaches a checkpoint.
    ``task_batching=None`` is resolved per backend by
    :func:`resolve_task_batching`. With a ``mesh`` (see :mod:`metajax.distributed`), the
    tasks are sharded over its ``axis_name`` and the state comes back replicated.
    With an :class:`~metajax.tasks.base.EpisodeFeed`, the step is called as
    ``step(state, batches)`` with ``steps_per_call`` of the feed's batches; the program
    holds only the feed's ``assemble``, so feeds of one configuration share it.
    """
    check_positive_int("steps_per_call", steps_per_call)
    check_positive_int("meta_batch", meta_batch)
    task_batching = resolve_task_batching(learner, task, task_batching)
    drawn: Any = task.assemble if isinstance(task, EpisodeFeed) else task
    task_arrays, rebuild_task = partition(drawn)
    if mesh is not None:
        _sharded_value_and_grad(learner, meta_batch, mesh, task_batching, axis_name)  # refuse a bad meta_batch now
        task_arrays = replicate(task_arrays, mesh)
    config = (learner, optimizer, meta_batch, steps_per_call, task_batching, mesh, axis_name)
    # The same configuration (equal learner and task, the same optimizer object) reuses one
    # jitted program, so a second train() call does not trace and compile again.
    static = tuple(x for x in jax.tree.leaves(drawn) if not is_array(x))
    cache_key: tuple | None = (config, jax.tree.structure(drawn), static)
    try:
        many = _PROGRAMS.get(cache_key)
    except TypeError:  # an unhashable configuration: compile a program of its own
        cache_key, many = None, None
    if many is None:
        many = _program(rebuild_task, *config)
        if cache_key is not None:
            _PROGRAMS[cache_key] = many
            while len(_PROGRAMS) > _MAX_PROGRAMS:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
    return TrainStep(many, task_arrays, task_batching, steps_per_call)


_PROGRAMS: dict = {}
_MAX_PROGRAMS = 64


def _program(rebuild_task, learner, optimizer, meta_batch, steps_per_call, task_batching, mesh, axis_name):
    """The jitted ``(state, task_arrays, batches=None) -> (state, stacked metrics)`` of ``steps_per_call`` steps."""
    shardings = {} if mesh is None else {"out_shardings": NamedSharding(mesh, P())}

    @functools.partial(jax.jit, donate_argnums=0, **shardings)
    def many(state, task_arrays, batches=None):
        one = meta_step(
            learner, rebuild_task(task_arrays), optimizer, meta_batch, task_batching, mesh=mesh, axis_name=axis_name
        )

        def body(s, batch):
            s, metrics = one(s, batch)
            return s, {**metrics, "state_finite": all_finite((s.params, s.opt_state, s.model_state))}

        if steps_per_call == 1:
            # No loop around a single step: XLA's CPU backend compiles the gradients of its
            # own convolutions inside a loop body (even one it later removes) to generic
            # loops several times slower than outside one (docs/performance.md).
            state, metrics = body(state, None if batches is None else batches[0])
            return state, jax.tree.map(lambda m: m[None], metrics)
        # A feed's batches, one per step, become the scan's inputs (stacked on the device).
        fed = None if batches is None else jax.tree.map(lambda *b: jnp.stack(b), *batches)
        return jax.lax.scan(body, state, fed, length=steps_per_call)

    return many


def all_finite(tree: Any) -> jax.Array:
    """A bool scalar: every floating-point value in ``tree`` is finite (integer leaves, keys and steps, are skipped)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def train(
    learner: MetaObjective,
    task: TaskDistribution | EpisodeFeed,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    num_steps: int,
    meta_batch: int,
    steps_per_call: int = 1,
    log_every: int = 100,
    task_batching: str | None = None,
    mesh: Mesh | None = None,
    state: TrainState | None = None,
    progress: bool = True,
    on_log: Callable[[TrainState, dict], None] | None = None,
    max_seconds: float | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_record: dict | None = None,
    divergence: Divergence | float | None = Divergence(),
) -> tuple[TrainState, list[dict]]:
    """Meta-train ``learner`` on ``task`` for ``num_steps`` meta-steps.

    Args:
        learner: a :class:`~metajax.learner.MetaObjective` (any learner).
        task: task distribution with ``sample(key, n)``, or an
            :class:`~metajax.tasks.base.EpisodeFeed` (a host pipeline such as
            :class:`~metajax.tasks.HostEpisodes`) whose position must be the state's step
            (restore it with ``feed.set_state(checkpointer.pipeline_state(step))``).
        optimizer: the outer Optax transformation, e.g. ``optax.adam(1e-3)``.
        key: PRNG key of the run (ignored when ``state`` is given).
        num_steps: total meta-steps; a given ``state`` continues up to this count.
        meta_batch: tasks per meta-step.
        steps_per_call: meta-steps per jitted dispatch (use 10-100 for sinusoid).
        log_every: meta-steps per history entry (rounded up to whole dispatches).
        task_batching: ``"vmap"``, ``"map"`` (``lax.map``, one task at a time), or ``None``
            for the per-backend choice of :func:`resolve_task_batching`.
        mesh: shard each meta-step's tasks over this mesh's task axis (see
            :mod:`metajax.distributed`); checkpoints, logs and the progress bar work as on
            one device. ``meta_batch`` must be a multiple of its devices.
        state: a state to continue from (e.g. a restored checkpoint).
        progress: show a progress bar with loss and tasks/s.
        on_log: called as ``on_log(state, entry)`` after each history entry (checkpoints, logs).
        max_seconds: stop at the first dispatch that ends after this much wall time (a
            time budget); the returned state's ``step`` says how far it got.
        checkpointer: saves the state every ``checkpointer.every`` meta-steps (dispatches
            end on those steps) and at the end, with a feed's position; resuming from one of
            its checkpoints gives the same parameters as an uninterrupted run. Only states whose parameters and
            optimizer state are finite are saved. On ``KeyboardInterrupt`` the current
            state is saved if it is complete and finite (else the last checkpoint stands)
            and the interrupt is re-raised.
        checkpoint_record: JSON-able record stored with each checkpoint (the run's config).
        divergence: the :class:`Divergence` rule for a finite blow-up (a number is its
            ``factor``; default: 1000 x the median logged loss after 2 entries), or ``None``.
            Non-finite losses and states always stop the run.

    Returns:
        ``(state, history)``; each history entry holds ``step``, the mean of every metric
        over the interval, ``tasks_per_s`` and ``elapsed_s``.

    Raises:
        DivergenceError: (a ``FloatingPointError``) the loss or the state became non-finite,
            or the loss broke the ``divergence`` rule; the message names the meta-step.
    """
    check_positive_int("num_steps", num_steps)
    check_positive_int("log_every", log_every)
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}.")
    rule = resolve_divergence(divergence)
    if state is None:
        state = init_state(learner, task, optimizer, key)
    feed = task if isinstance(task, EpisodeFeed) else None
    if feed is not None:
        _check_feed(feed, meta_batch, int(state.step))
    if mesh is not None:
        state = replicate(state, mesh)
    task_batching = resolve_task_batching(learner, task, task_batching)
    step_fns: dict[int, Callable] = {}
    history: list[dict] = []
    done = start = int(state.step)
    threshold = float("inf")  # the divergence bound, updated when an entry is logged
    bar = _progress_bar(num_steps, done) if progress else None
    window: list[dict] = []
    window_start, t_start = time.perf_counter(), time.perf_counter()
    next_log = (done // log_every + 1) * log_every
    try:
        while done < num_steps:
            n = min(steps_per_call, num_steps - done)
            if checkpointer is not None:
                n = min(n, (done // checkpointer.every + 1) * checkpointer.every - done)
            if n not in step_fns:
                step_fns[n] = make_train_step(learner, task, optimizer, meta_batch, n, task_batching, mesh=mesh)
            # With a mesh each fed batch is split over its devices by task (already so from a feed
            # that puts it there, as HostEpisodes(device=NamedSharding(mesh, P("tasks"))) does).
            batches = None if feed is None else tuple(_on_mesh(next(feed), mesh) for _ in range(n))
            state, metrics = step_fns[n](state, batches)
            metrics = jax.device_get(metrics)  # the one host sync per dispatch
            _check_divergence(metrics.pop("state_finite"), metrics["loss"], done, threshold, rule, state)
            done += n
            window.append(metrics)
            if bar is not None:
                bar.update(n)
            out_of_time = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
            if done >= next_log or done == num_steps or out_of_time:
                now = time.perf_counter()
                steps_in_window = sum(len(m["loss"]) for m in window)
                entry: dict[str, float] = {"step": done}
                entry.update({k: float(np.mean(np.concatenate([m[k] for m in window]))) for k in window[0]})
                entry["tasks_per_s"] = steps_in_window * meta_batch / max(now - window_start, 1e-9)
                entry["elapsed_s"] = now - t_start
                history.append(entry)
                if rule is not None:
                    threshold = rule.threshold([e["loss"] for e in history])
                if bar is not None:
                    bar.set_postfix(loss=f"{entry['loss']:.4g}", tasks_per_s=f"{entry['tasks_per_s']:.0f}")
                if on_log is not None:
                    on_log(state, entry)
                window, window_start = [], time.perf_counter()
                next_log = (done // log_every + 1) * log_every
            if checkpointer is not None:  # after the log entry, so a checkpoint's log is complete
                checkpointer.maybe_save(state, checkpoint_record, _position(feed))
            if out_of_time:
                break
    except KeyboardInterrupt:
        # A feed interrupted between drawing its batches and their dispatch is past the state.
        in_step = feed is None or feed.position == int(state.step)
        if checkpointer is not None and in_step and _intact_and_finite(state):
            checkpointer.save(state, checkpoint_record, _position(feed))
        raise
    finally:
        if bar is not None:
            bar.close()
    if checkpointer is not None and done > start:
        checkpointer.save(state, checkpoint_record, _position(feed))
    return state, history


def _check_feed(feed: EpisodeFeed, meta_batch: int, step: int) -> None:
    """Refuse an :class:`~metajax.tasks.base.EpisodeFeed` that does not fit the run (its batch size, its position)."""
    if feed.tasks_per_step != meta_batch:
        raise ValueError(
            f"meta_batch must equal the episode feed's tasks_per_step ({feed.tasks_per_step}), "
            f"got meta_batch={meta_batch}."
        )
    if feed.position != step:
        raise ValueError(
            f"The episode feed has served {feed.position} batches while state is at step {step}, so the run would "
            f"not continue its episode stream; restore the feed's position saved with the state: "
            f"feed.set_state(checkpointer.pipeline_state({step}))."
        )


def _on_mesh(batch: Any, mesh: Mesh | None) -> Any:
    """A fed batch as the step takes it: split by task over ``mesh`` (a no-op where it already is), or as it is."""
    return batch if mesh is None else shard_tasks(batch, mesh)


def _position(feed: EpisodeFeed | None) -> dict | None:
    """A feed's position for the checkpoint, or ``None`` without a feed."""
    return None if feed is None else feed.get_state()


def _check_divergence(
    state_finite: np.ndarray, losses: np.ndarray, first_step: int, threshold: float, rule, state: TrainState
) -> None:
    """Raise :class:`DivergenceError` at the first of a dispatch's meta-steps whose loss or state fails a check.

    Args:
        state_finite: ``[n]`` bool, the state after each step is finite.
        losses: ``[n]`` the steps' losses.
        first_step: meta-steps done before the dispatch.
        threshold: the :class:`Divergence` bound on the losses (``inf``: none).
        rule: the :class:`Divergence` in force, or ``None``.
        state: the state after the dispatch, to name a non-finite leaf.
    """
    bad_loss, bad_state = ~np.isfinite(losses), ~state_finite
    too_big = np.isfinite(losses) & (losses > threshold)
    failed = np.flatnonzero(bad_loss | bad_state | too_big)
    if not failed.size:
        return
    i = int(failed[0])
    step, loss = first_step + i + 1, float(losses[i])
    if bad_loss[i]:
        raise DivergenceError(
            f"The meta-training loss became non-finite ({loss}) at meta-step {step}. {_ADVICE}",
            step=step,
            loss=loss,
            rule="non-finite loss",
        )
    if bad_state[i]:
        raise DivergenceError(
            f"The meta-parameters or optimizer state became non-finite at meta-step {step} "
            f"({_first_non_finite(state)}) while the loss was {loss:.4g}; it was not checkpointed. {_ADVICE}",
            step=step,
            loss=loss,
            rule="non-finite state",
        )
    described = f"loss > {rule.factor:g} x the median logged loss"
    raise DivergenceError(
        f"The meta-training loss diverged at meta-step {step}: {loss:.4g} exceeds {threshold:.4g}, "
        f"{rule.factor:g} x the median of the losses logged so far ({rule}). {_ADVICE} "
        "Pass divergence=None to train without this rule.",
        step=step,
        loss=loss,
        rule=described,
    )


def _first_non_finite(state: TrainState) -> str:
    """``"<path> holds inf"`` for the first non-finite leaf of the params, optimizer or model state (error path)."""
    parts = ("params", "opt_state", "model_state")
    for path, leaf in jax.tree_util.tree_flatten_with_path(tuple(getattr(state, p) for p in parts))[0]:
        values = np.asarray(leaf)
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            where = parts[path[0].idx] + jax.tree_util.keystr(path[1:])
            return f"{where} holds {values[~np.isfinite(values)].flat[0]}"
    return "a leaf became non-finite within the dispatch"


def _intact_and_finite(state: TrainState) -> bool:
    """Whether ``state`` can be checkpointed: not donated to a dispatch that was interrupted, and finite."""
    if any(getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree.leaves(state)):
        return False
    return bool(_all_finite_jit((state.params, state.opt_state, state.model_state)))


_all_finite_jit = jax.jit(all_finite)


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5)
