"""Drivers: run an online learner over a task sequence or a lifelong stream and measure it.

Both drivers compile once: a pass over the stream is one jitted ``lax.scan`` over a chunk
of its steps (``chunk``; the whole stream by default), called once per chunk with the same
shapes, so a pass can be checkpointed after each chunk (a :class:`StreamState`) and resumed
to the same results. Testing on the tasks happens inside the scan. Accuracy on each
incoming batch is measured *before* the learner updates on it (online accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metajax import losses
from metajax._checks import check_positive_int
from metajax._tree import partition
from metajax.continual import metrics as M
from metajax.episode import StreamBatch
from metajax.tasks.lifelong import NEW, OOD, SEEN, Schedule, draw_batch
from metajax.tasks.sequences import TaskSequence

if TYPE_CHECKING:
    from metajax.checkpoint import Checkpointer


def _metric(learner, state, x, y, metric: str) -> jax.Array:
    return losses.resolve(learner.objective, y)(learner.predict(state, x), y)[1][metric]


def evaluate_tasks(learner: Any, state: Any, sequence: TaskSequence, metric: str = "accuracy") -> jax.Array:
    """``metric`` of the learner on every task's test set: ``[T]`` (traceable; ``lax.map`` over tasks)."""
    return jax.lax.map(lambda xy: _metric(learner, state, xy[0], xy[1], metric), (sequence.test_x, sequence.test_y))


def _check_iid(iid) -> None:
    if not isinstance(iid, bool | np.bool_):
        raise TypeError(f"iid must be True or False, got {iid!r}.")


def _batches(x: jax.Array, batch_size: int, name: str) -> jax.Array:
    n = x.shape[0]
    if n % batch_size:
        raise ValueError(f"batch_size must divide the {n} training examples of each task ({name}), got {batch_size}.")
    return x.reshape(n // batch_size, batch_size, *x.shape[1:])


class StreamState(struct.PyTreeNode):
    """A pass over a stream after ``step`` of its steps: what the next step depends on (a checkpoint's contents).

    Attributes:
        step: stream steps done, int32 scalar.
        learner: the online learner's state.
        R: ``[T + 1, T]`` the test metric rows filled so far (the others NaN).
        online: ``[steps]`` each step's metric before its update (zero for steps not done).
    """

    step: jax.Array
    learner: Any
    R: jax.Array
    online: jax.Array


def _run_stream(
    learner: Any,
    state: Any,
    tests: TaskSequence,
    data: Any,
    items: Any,
    batch_of: Callable[[Any, Any], tuple[StreamBatch, jax.Array]],
    eval_rows: jax.Array,
    metric: str,
    chunk: int | None,
    checkpointer: Checkpointer | None,
    resume: Callable[[StreamState], StreamState] | None,
) -> tuple[StreamState, np.ndarray, int]:
    """The pass of both drivers: ``lax.scan`` over the stream's steps in chunks of ``chunk``, compiled once.

    Step ``i`` first fills ``R[eval_rows[i]]`` (if not ``-1``) with the test metric on
    ``tests``, then records the metric of ``batch_of(data, items[i])``'s batch and updates
    on it. The last chunk is padded with steps that change nothing. After each chunk but
    the last, ``checkpointer.maybe_save(pass state)``; ``resume(fresh pass state)`` gives
    the state to start from.

    Returns:
        ``(final pass state, test metric at the end [T], step resumed from)``.
    """
    steps = eval_rows.shape[0]
    chunk = steps if chunk is None else chunk
    check_positive_int("chunk", chunk)
    test_arrays, rebuild = partition(tests)
    evaluate = jax.jit(lambda s, arrays: evaluate_tasks(learner, s, rebuild(arrays), metric))
    R = jnp.full((tests.num_tasks + 1, tests.num_tasks), jnp.nan, jnp.float32)
    run = StreamState(jnp.int32(0), state, R.at[0].set(evaluate(state, test_arrays)), jnp.zeros(steps, jnp.float32))
    if resume is not None:
        run = resume(run)
    resumed_from = int(run.step)

    @jax.jit
    def run_chunk(run, data, items, eval_rows, test_arrays):
        def step(run, i):
            def take(run):
                batch, key = batch_of(data, jax.tree.map(lambda a: a[i], items))
                row = eval_rows[i]
                R = jax.lax.cond(
                    row >= 0,
                    lambda R: R.at[row].set(evaluate_tasks(learner, run.learner, rebuild(test_arrays), metric)),
                    lambda R: R,
                    run.R,
                )
                before = _metric(learner, run.learner, batch.x, batch.y, metric)
                s, _ = learner.update(run.learner, batch, key)
                return StreamState(i + 1, s, R, run.online.at[i].set(before.astype(run.online.dtype)))

            return jax.lax.cond(i < steps, take, lambda run: run, run), None

        return jax.lax.scan(step, run, run.step + jnp.arange(chunk, dtype=jnp.int32))[0]

    while int(run.step) < steps:
        run = run_chunk(run, data, items, eval_rows, test_arrays)
        if checkpointer is not None and int(run.step) < steps:
            checkpointer.maybe_save(run)
    return run, np.asarray(evaluate(run.learner, test_arrays)), resumed_from


def run_sequence(
    learner: Any,
    sequence: TaskSequence,
    *,
    key: jax.Array,
    batch_size: int = 1,
    state: Any = None,
    metric: str = "accuracy",
    iid: bool = False,
    chunk: int | None = None,
    checkpointer: Checkpointer | None = None,
    resume: Callable[[StreamState], StreamState] | None = None,
) -> dict:
    """Learn the tasks of ``sequence`` one after the other, in one pass, and fill ``R``.

    Each task's training examples arrive in order, ``batch_size`` at a time; the first
    batch of a task carries ``switched = True``. After each task the learner is tested on
    every task. With ``iid=True`` (joint training, the upper bound) the learner instead
    sees all tasks' examples shuffled together, never with ``switched = True``, and only
    ``R``'s first and last rows are filled (the others are NaN).

    Args:
        learner: an online learner (:mod:`metajax.continual.base`).
        sequence: the tasks.
        key: PRNG key (initialisation, replay, shuffling).
        batch_size: examples per stream step; must divide the examples per task.
        state: a starting state (e.g. OML's meta-trained parameters); ``None`` to initialise.
        metric: the objective's metric filling ``R`` (``"accuracy"``, or ``"mse"`` for regression).
        iid: joint (i.i.d.) training: shuffle the stream across tasks (e.g. ``Finetune``
            run with ``iid=True`` is the usual upper bound).
        chunk: stream steps per compiled ``lax.scan`` call (``None``: the whole stream);
            the pass stops after each chunk to checkpoint.
        checkpointer: a :class:`~metajax.checkpoint.Checkpointer`; after each chunk but the
            last, ``checkpointer.maybe_save(pass_state)`` with the :class:`StreamState`.
        resume: called with the fresh :class:`StreamState`, returns the one to continue
            from (e.g. ``lambda like: checkpointer.resume(like)[0]``); the results equal an
            uninterrupted pass's with the same ``chunk``.

    Returns:
        ``{"R": [T + 1, T] array, "online": [steps] metric of each batch before its
        update, "online_cumulative": [steps], "summary": matrix metrics (ACC etc.; only
        ``acc`` with ``iid=True``), "state", "resumed_from": the step the pass resumed
        from}``, NumPy on the host (but ``state``).
    """
    check_positive_int("batch_size", batch_size)
    _check_iid(iid)
    T = sequence.num_tasks
    k_init, k_run, k_shuffle = jax.random.split(key, 3)
    if state is None:
        state = learner.init_state(k_init, sequence.train_x[0, :batch_size], sequence.train_y[0, :batch_size])
    if iid:
        x = sequence.train_x.reshape(-1, *sequence.train_x.shape[2:])
        y = sequence.train_y.reshape(-1, *sequence.train_y.shape[2:])
        perm = jax.random.permutation(k_shuffle, x.shape[0])
        xs, ys = _batches(x[perm], batch_size, "all tasks"), _batches(y[perm], batch_size, "all tasks")
        tasks, switched = jnp.zeros(xs.shape[0], jnp.int32), jnp.zeros(xs.shape[0], bool)
        keys = jax.random.split(k_run, xs.shape[0])
        eval_rows = jnp.full(xs.shape[0], -1, jnp.int32)
    else:
        xs = jnp.concatenate([_batches(sequence.train_x[t], batch_size, f"task {t}") for t in range(T)])
        ys = jnp.concatenate([_batches(sequence.train_y[t], batch_size, f"task {t}") for t in range(T)])
        per_task = xs.shape[0] // T
        tasks = jnp.repeat(jnp.arange(T, dtype=jnp.int32), per_task)
        switched = jnp.arange(xs.shape[0]) % per_task == 0
        keys = jnp.concatenate([jax.random.split(k, per_task) for k in jax.random.split(k_run, T)])
        eval_rows = jnp.where(switched & (tasks > 0), tasks, -1)  # row t: after tasks 0..t-1
    run, final, resumed_from = _run_stream(
        learner,
        state,
        sequence,
        (),
        (xs, ys, tasks, switched, keys),
        lambda _, item: (StreamBatch(*item[:4]), item[4]),
        eval_rows,
        metric,
        chunk,
        checkpointer,
        resume,
    )
    R = np.asarray(run.R).copy()
    R[T] = final
    online = np.asarray(run.online)
    summary = {"acc": float(R[-1].mean())} if iid else M.summarize(R)
    return {
        "R": R,
        "online": online,
        "online_cumulative": M.online_cumulative_accuracy(online),
        "summary": summary,
        "state": run.learner,
        "resumed_from": resumed_from,
    }


def run_lifelong(
    learner: Any,
    pool: TaskSequence,
    schedule: Schedule,
    *,
    num_tasks: int,
    key: jax.Array,
    batch_size: int = 10,
    state: Any = None,
    metric: str = "accuracy",
    iid: bool = False,
    chunk: int | None = None,
    checkpointer: Checkpointer | None = None,
    resume: Callable[[StreamState], StreamState] | None = None,
) -> dict:
    """Run a lifelong stream (jitted ``lax.scan`` calls over its steps, ``chunk`` at a time) and measure it.

    Step ``t`` draws ``batch_size`` training examples of pool task ``schedule.task[t]``,
    records the learner's metric on them, then updates (``switched`` from the schedule).
    ``R`` is filled without task boundaries being imposed: row ``k`` (``k >= 1``) is the
    test metric on the in-distribution tasks just before task ``k`` (0-based) is first
    introduced, i.e. after the stream so far covered tasks ``0..k-1`` (with revisits);
    the last row is the end of the stream. Columns of tasks never introduced are dropped.
    With ``iid=True`` (joint training, the upper bound) the steps are shuffled across the
    stream first and none raises ``switched``; ``R`` keeps only its first and last rows.

    Args:
        learner: an online learner.
        pool: ``num_tasks`` in-distribution tasks followed by the out-of-distribution ones.
        schedule: from :meth:`LifelongStream.schedule` with the same ``num_tasks``.
        num_tasks: in-distribution tasks in ``pool`` (the columns of ``R``).
        key: PRNG key.
        batch_size: examples per step.
        state: a starting state, or ``None`` to initialise.
        metric: the objective's metric.
        iid: joint (i.i.d.) training: shuffle the stream's steps across tasks.
        chunk, checkpointer, resume: checkpointing the pass, as in :func:`run_sequence`.

    Returns:
        ``{"R", "online" [steps], "online_cumulative", "online_by_source" (mean online
        metric on steps from seen / new / ood tasks), "introduced", "summary", "state",
        "resumed_from"}``.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_tasks", num_tasks)
    _check_iid(iid)
    if pool.num_tasks < num_tasks:
        raise ValueError(f"pool holds {pool.num_tasks} tasks, fewer than num_tasks={num_tasks}.")
    k_init, k_run, k_shuffle = jax.random.split(key, 3)
    in_dist = jax.tree.map(lambda a: a[:num_tasks], pool)
    if state is None:
        state = learner.init_state(k_init, pool.train_x[0, :batch_size], pool.train_y[0, :batch_size])
    if iid:
        perm = jax.random.permutation(k_shuffle, schedule.task.shape[0])
        schedule = Schedule(schedule.task[perm], schedule.source[perm], jnp.zeros_like(schedule.switched))
    pool_arrays, rebuild = partition(pool)

    def batch_of(pool_arrays, item):
        task, switched, k = item
        k_draw, k_update = jax.random.split(k)
        x, y = draw_batch(k_draw, rebuild(pool_arrays), task, batch_size)
        return StreamBatch(x, y, task, switched), k_update

    introduce = schedule.switched & (schedule.source == NEW) & (schedule.task > 0) & (not iid)
    run, final, resumed_from = _run_stream(
        learner,
        state,
        in_dist,
        pool_arrays,
        (schedule.task, schedule.switched, jax.random.split(k_run, schedule.task.shape[0])),
        batch_of,
        jnp.where(introduce, schedule.task, -1),
        metric,
        chunk,
        checkpointer,
        resume,
    )
    task, source = np.asarray(schedule.task), np.asarray(schedule.source)
    introduced = int(min(num_tasks, 1 + np.max(np.where(task < num_tasks, task, 0))))
    R = np.asarray(run.R)[: introduced + 1, :introduced].copy()
    R[introduced] = final[:introduced]
    online = np.asarray(run.online)
    by_source = {
        name: (float(online[source == code].mean()) if np.any(source == code) else None)
        for name, code in (("seen", SEEN), ("new", NEW), ("ood", OOD))
    }
    summary = {"acc": float(R[-1].mean())} if iid else M.summarize(R)
    return {
        "R": R,
        "online": online,
        "online_cumulative": M.online_cumulative_accuracy(online),
        "online_by_source": by_source,
        "introduced": introduced,
        "summary": summary,
        "state": run.learner,
        "resumed_from": resumed_from,
    }
