"""Drivers: run an online learner over a task sequence or a lifelong stream and measure it.

Both drivers compile once: learning a task is one jitted ``lax.scan`` over its batches
(called once per task with identical shapes), and the lifelong stream is one jitted
``lax.scan`` over all its steps. Accuracy on each incoming batch is measured *before*
the learner updates on it (online accuracy).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metajax import losses
from metajax._checks import check_positive_int
from metajax._tree import partition
from metajax.continual import metrics as M
from metajax.episode import StreamBatch
from metajax.tasks.lifelong import NEW, OOD, SEEN, Schedule, draw_batch
from metajax.tasks.sequences import TaskSequence


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


def run_sequence(
    learner: Any,
    sequence: TaskSequence,
    *,
    key: jax.Array,
    batch_size: int = 1,
    state: Any = None,
    metric: str = "accuracy",
    iid: bool = False,
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

    Returns:
        ``{"R": [T + 1, T] array, "online": [steps] metric of each batch before its
        update, "online_cumulative": [steps], "summary": matrix metrics (ACC etc.; only
        ``acc`` with ``iid=True``)}``, NumPy on the host.
    """
    check_positive_int("batch_size", batch_size)
    _check_iid(iid)
    T = sequence.num_tasks
    k_init, k_run, k_shuffle = jax.random.split(key, 3)
    if state is None:
        state = learner.init_state(k_init, sequence.train_x[0, :batch_size], sequence.train_y[0, :batch_size])
    seq_arrays, rebuild = partition(sequence)

    @jax.jit
    def learn(state, xs, ys, task, key):
        def step(s, item):
            x, y, i, k = item
            before = _metric(learner, s, x, y, metric)
            batch = StreamBatch(x, y, task, (i == 0) & jnp.logical_not(iid))
            s, _ = learner.update(s, batch, k)
            return s, before

        items = (xs, ys, jnp.arange(xs.shape[0]), jax.random.split(key, xs.shape[0]))
        return jax.lax.scan(step, state, items)

    evaluate = jax.jit(lambda state, arrays: evaluate_tasks(learner, state, rebuild(arrays), metric))
    rows = [np.asarray(evaluate(state, seq_arrays))]
    online_batches = []
    if iid:
        x = sequence.train_x.reshape(-1, *sequence.train_x.shape[2:])
        y = sequence.train_y.reshape(-1, *sequence.train_y.shape[2:])
        perm = jax.random.permutation(k_shuffle, x.shape[0])
        state, before = learn(
            state,
            _batches(x[perm], batch_size, "all tasks"),
            _batches(y[perm], batch_size, "all tasks"),
            jnp.int32(0),
            k_run,
        )
        online_batches.append(np.asarray(before))
        rows += [np.full(T, np.nan)] * (T - 1) + [np.asarray(evaluate(state, seq_arrays))]
    else:
        for t, k in enumerate(jax.random.split(k_run, T)):
            xs = _batches(sequence.train_x[t], batch_size, f"task {t}")
            ys = _batches(sequence.train_y[t], batch_size, f"task {t}")
            state, before = learn(state, xs, ys, jnp.int32(t), k)
            online_batches.append(np.asarray(before))
            rows.append(np.asarray(evaluate(state, seq_arrays)))
    R = np.stack(rows)
    online = np.concatenate(online_batches)
    summary = {"acc": float(R[-1].mean())} if iid else M.summarize(R)
    return {
        "R": R,
        "online": online,
        "online_cumulative": M.online_cumulative_accuracy(online),
        "summary": summary,
        "state": state,
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
) -> dict:
    """Run a lifelong stream (one jitted ``lax.scan`` over all steps) and measure it.

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

    Returns:
        ``{"R", "online" [steps], "online_cumulative", "online_by_source" (mean online
        metric on steps from seen / new / ood tasks), "introduced", "summary", "state"}``.
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
    in_arrays, rebuild_in = partition(in_dist)

    @jax.jit
    def run(state, schedule, pool_arrays, in_arrays, key):
        pool_, in_ = rebuild(pool_arrays), rebuild_in(in_arrays)
        R0 = jnp.full((num_tasks + 1, num_tasks), jnp.nan, jnp.float32)
        R0 = R0.at[0].set(evaluate_tasks(learner, state, in_, metric))

        def step(carry, item):
            s, R = carry
            task, source, switched, k = item
            k_draw, k_update = jax.random.split(k)
            x, y = draw_batch(k_draw, pool_, task, batch_size)
            introduce = switched & (source == NEW) & (task > 0) & jnp.logical_not(iid)
            R = jax.lax.cond(
                introduce, lambda R: R.at[task].set(evaluate_tasks(learner, s, in_, metric)), lambda R: R, R
            )
            before = _metric(learner, s, x, y, metric)
            s, _ = learner.update(s, StreamBatch(x, y, task, switched), k_update)
            return (s, R), before

        keys = jax.random.split(key, schedule.task.shape[0])
        (state, R), online = jax.lax.scan(step, (state, R0), (schedule.task, schedule.source, schedule.switched, keys))
        return state, R, online, evaluate_tasks(learner, state, in_, metric)

    state, R, online, final = run(state, schedule, pool_arrays, in_arrays, k_run)
    task, source = np.asarray(schedule.task), np.asarray(schedule.source)
    introduced = int(min(num_tasks, 1 + np.max(np.where(task < num_tasks, task, 0))))
    R = np.asarray(R)[: introduced + 1, :introduced].copy()
    R[introduced] = np.asarray(final)[:introduced]
    online = np.asarray(online)
    by_source = {
        name: (float(online[source == code].mean()) if np.any(source == code) else None)
        for name, code in (("seen", SEEN), ("new", NEW), ("ood", OOD))
    }
    if iid:
        summary = {"acc": float(R[-1].mean())}
    else:
        summary = M.summarize(R)
    return {
        "R": R,
        "online": online,
        "online_cumulative": M.online_cumulative_accuracy(online),
        "online_by_source": by_source,
        "introduced": introduced,
        "summary": summary,
        "state": state,
    }
