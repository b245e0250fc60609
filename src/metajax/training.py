"""The meta-training loop: one jitted meta-step over a batch of tasks, Optax outside.

The trainer knows only the learner contract (``init``, ``loss``) and the task contract
(``sample``); it imports no learner.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from metajax._checks import check_choice, check_positive_int
from metajax._tree import partition
from metajax.episode import Episode
from metajax.tasks.base import TaskDistribution

if TYPE_CHECKING:  # orbax is imported only by runs that checkpoint
    from metajax.checkpoint import Checkpointer

TASK_BATCHING = ("vmap", "map")


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue: meta-parameters, optimizer state, PRNG key, step.

    Attributes:
        step: number of meta-steps taken, int32 scalar.
        params: the learner's meta-parameters.
        opt_state: the Optax optimizer state.
        key: raw PRNG key (``uint32[2]``) from which the next meta-step draws.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array


def first_episode(task: TaskDistribution, key: jax.Array) -> Episode:
    """One unbatched episode of ``task``, to shape parameters."""
    return jax.tree.map(lambda a: a[0], task.sample(key, 1))


def init_state(
    learner: Any, task: TaskDistribution, optimizer: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    """Initial meta-parameters and optimizer state.

    Args:
        learner: any object with ``init(key, episode) -> params``.
        task: the task distribution whose episodes shape the parameters.
        optimizer: the outer (meta) optimizer.
        key: PRNG key; the same key gives the same run.
    """
    k_init, k_episode, k_run = jax.random.split(key, 3)
    params = learner.init(k_init, first_episode(task, k_episode))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), _raw_key(k_run))


def _raw_key(key: jax.Array) -> jax.Array:
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def default_task_batching(per_task_conv_weights: bool) -> str:
    """How to batch tasks on this backend: ``"vmap"`` or ``"map"``.

    One half of the per-backend switch; the other is ``metajax.models.conv.default_conv_impl``
    (Conv4's ``impl=None``: ``"patches"`` on CPU, ``"xla"`` elsewhere). ``vmap`` of a
    convolution whose weights differ per task (MAML's adapted Conv4) becomes a grouped
    convolution, which XLA's CPU backend runs very slowly; written as patches x matmul it
    becomes a batched matmul. Measured on 2 busy CPU cores (load 2-5), Conv4-64 5-way 1-shot
    5 queries, meta-batch 32, 1 inner step, tasks/s (``scripts/benchmark.py --workload
    maml-omniglot --task-batching vmap,map --conv-impl xla,patches``)::

                        xla conv   patches
        first  / vmap      1.2       42.3
        first  / map       6.7       45.7
        second / vmap      0.9       28.5
        second / map       4.3       35.9

    So on CPU, tasks with per-task conv weights use ``lax.map`` (with patches); everything
    else, and every accelerator, uses ``vmap``. See ``docs/performance.md``.
    """
    return "map" if per_task_conv_weights and jax.default_backend() == "cpu" else "vmap"


def batch_value_and_grad(
    learner: Any, params: Any, episodes: Episode, keys: jax.Array, task_batching: str = "vmap"
) -> tuple[tuple[jax.Array, dict], Any]:
    """``((mean loss, mean metrics), gradient of the mean loss)`` over a batch of tasks.

    ``"vmap"`` differentiates the mean of the vmapped ``learner.loss``. ``"map"`` runs one
    task at a time (a ``lax.scan``) and differentiates inside it, accumulating the sum of
    the per-task gradients, as a PyTorch loop over tasks does: the backward pass needs only
    one task's activations at a time, instead of the residuals of every task that the
    gradient of a ``lax.map`` keeps.
    """
    if task_batching == "vmap":

        def batch_loss(params):
            losses, metrics = jax.vmap(learner.loss, in_axes=(None, 0, 0))(params, episodes, keys)
            return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)

        return jax.value_and_grad(batch_loss, has_aux=True)(params)
    one = jax.value_and_grad(learner.loss, has_aux=True)

    def add(total, episode_key):
        value_grad = one(params, *episode_key)
        return jax.tree.map(jnp.add, total, value_grad), None

    first = jax.tree.map(lambda a: a[0], (episodes, keys))
    rest = jax.tree.map(lambda a: a[1:], (episodes, keys))
    total, _ = jax.lax.scan(add, one(params, *first), rest)
    n = keys.shape[0]
    return jax.tree.map(lambda t: t / n, total)


def meta_step(
    learner: Any,
    task: TaskDistribution,
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    task_batching: str = "vmap",
    *,
    value_and_grad: Callable | None = None,
) -> Callable[[TrainState], tuple[TrainState, dict]]:
    """The un-jitted meta-step ``state -> (state, metrics)``.

    Draws ``meta_batch`` episodes from the state's key, evaluates ``learner.loss`` on each
    task (``vmap`` over tasks, or ``lax.map`` with ``task_batching="map"``), averages,
    differentiates and applies one ``optimizer`` update. ``metrics`` holds the mean
    ``loss`` and the mean of every metric the learner returns.

    ``value_and_grad(params, episodes, keys) -> ((loss, metrics), grads)`` replaces
    :func:`batch_value_and_grad` for the batch (the sharded step of
    :mod:`metajax.distributed` passes one that splits the tasks over devices).
    """
    check_positive_int("meta_batch", meta_batch)
    check_choice("task_batching", task_batching, TASK_BATCHING)
    if value_and_grad is None:

        def value_and_grad(params, episodes, keys):
            return batch_value_and_grad(learner, params, episodes, keys, task_batching)

    def step(state: TrainState) -> tuple[TrainState, dict]:
        key, k_tasks, k_loss = jax.random.split(jax.random.wrap_key_data(state.key), 3)
        episodes = task.sample(k_tasks, meta_batch)
        keys = jax.random.split(k_loss, meta_batch)
        (loss, metrics), grads = value_and_grad(state.params, episodes, keys)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, jax.random.key_data(key))
        return new, {"loss": loss, **metrics}

    return step


def make_train_step(
    learner: Any,
    task: TaskDistribution,
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    steps_per_call: int = 1,
    task_batching: str = "vmap",
) -> Callable[[TrainState], tuple[TrainState, dict]]:
    """A jitted function running ``steps_per_call`` meta-steps in one dispatch.

    The steps are a ``lax.scan``, so tiny problems (sinusoid) are not bound by Python
    dispatch. The input state's buffers are donated; a task's arrays (a dataset) are
    passed as arguments, not embedded in the program. Metrics come back stacked:
    ``[steps_per_call]`` per metric.
    """
    check_positive_int("steps_per_call", steps_per_call)
    check_positive_int("meta_batch", meta_batch)
    task_arrays, rebuild_task = partition(task)

    @functools.partial(jax.jit, donate_argnums=0)
    def many(state, task_arrays):
        one = meta_step(learner, rebuild_task(task_arrays), optimizer, meta_batch, task_batching)
        return jax.lax.scan(lambda s, _: one(s), state, None, length=steps_per_call)

    return lambda state: many(state, task_arrays)


def train(
    learner: Any,
    task: TaskDistribution,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    num_steps: int,
    meta_batch: int,
    steps_per_call: int = 1,
    log_every: int = 100,
    task_batching: str = "vmap",
    state: TrainState | None = None,
    progress: bool = True,
    on_log: Callable[[TrainState, dict], None] | None = None,
    max_seconds: float | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_record: dict | None = None,
) -> tuple[TrainState, list[dict]]:
    """Meta-train ``learner`` on ``task`` for ``num_steps`` meta-steps.

    Args:
        learner: object with ``init`` and ``loss`` (the learner contract).
        task: task distribution with ``sample(key, n)``.
        optimizer: the outer Optax transformation, e.g. ``optax.adam(1e-3)``.
        key: PRNG key of the run (ignored when ``state`` is given).
        num_steps: total meta-steps; a given ``state`` continues up to this count.
        meta_batch: tasks per meta-step.
        steps_per_call: meta-steps per jitted dispatch (use 10-100 for sinusoid).
        log_every: meta-steps per history entry (rounded up to whole dispatches).
        task_batching: ``"vmap"`` or ``"map"`` (``lax.map``, one task at a time).
        state: a state to continue from (e.g. a restored checkpoint).
        progress: show a progress bar with loss and tasks/s.
        on_log: called as ``on_log(state, entry)`` after each history entry (checkpoints, logs).
        max_seconds: stop at the first dispatch that ends after this much wall time (a
            time budget); the returned state's ``step`` says how far it got.
        checkpointer: saves the state every ``checkpointer.every`` meta-steps (dispatches
            end on those steps), at the end, and on ``KeyboardInterrupt``; resuming from
            one of its checkpoints gives the same parameters as an uninterrupted run.
        checkpoint_record: JSON-able record stored with each checkpoint (the run's config).

    Returns:
        ``(state, history)``; each history entry holds ``step``, the mean of every metric
        over the interval, ``tasks_per_s`` and ``elapsed_s``.

    Raises:
        FloatingPointError: the loss became non-finite; the message names the step.
    """
    check_positive_int("num_steps", num_steps)
    check_positive_int("log_every", log_every)
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}.")
    if state is None:
        state = init_state(learner, task, optimizer, key)
    step_fns: dict[int, Callable] = {}
    history: list[dict] = []
    done = int(state.step)
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
                step_fns[n] = make_train_step(learner, task, optimizer, meta_batch, n, task_batching)
            state, metrics = step_fns[n](state)
            metrics = jax.device_get(metrics)
            _check_finite(metrics["loss"], done)
            done += n
            window.append(metrics)
            if bar is not None:
                bar.update(n)
            out_of_time = max_seconds is not None and time.perf_counter() - t_start >= max_seconds
            if done >= next_log or done == num_steps or out_of_time:
                now = time.perf_counter()
                steps_in_window = sum(len(m["loss"]) for m in window)
                entry = {"step": done}
                entry.update({k: float(np.mean(np.concatenate([m[k] for m in window]))) for k in window[0]})
                entry["tasks_per_s"] = steps_in_window * meta_batch / max(now - window_start, 1e-9)
                entry["elapsed_s"] = now - t_start
                history.append(entry)
                if bar is not None:
                    bar.set_postfix(loss=f"{entry['loss']:.4g}", tasks_per_s=f"{entry['tasks_per_s']:.0f}")
                if on_log is not None:
                    on_log(state, entry)
                window, window_start = [], time.perf_counter()
                next_log = (done // log_every + 1) * log_every
            if checkpointer is not None:  # after the log entry, so a checkpoint's log is complete
                checkpointer.maybe_save(state, checkpoint_record)
            if out_of_time:
                break
    except KeyboardInterrupt:
        if checkpointer is not None:
            checkpointer.save(state, checkpoint_record)
        raise
    finally:
        if bar is not None:
            bar.close()
    if checkpointer is not None:
        checkpointer.save(state, checkpoint_record)
    return state, history


def _check_finite(losses: np.ndarray, first_step: int) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        raise FloatingPointError(
            f"The meta-training loss became non-finite ({losses[bad[0]]}) at meta-step {step}. "
            "Lower the inner or outer learning rate, or clip gradients (optax.clip_by_global_norm)."
        )


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5)
