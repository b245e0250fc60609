"""Meta-test: adapt on held-out tasks, report each metric's mean and 95% interval."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from metajax._checks import check_positive_int
from metajax._tree import partition
from metajax.episode import validate_episode
from metajax.learner import Learner, Stateful, check_conforms
from metajax.tasks.base import TaskDistribution
from metajax.training import resolve_task_batching


def evaluate(
    learner: Learner,
    params: Any,
    task: TaskDistribution,
    *,
    key: jax.Array,
    num_tasks: int = 600,
    num_steps: int | None = None,
    batch_size: int = 100,
    task_batching: str | None = None,
    model_state: Any = None,
) -> dict[str, Any]:
    """Adapt to ``num_tasks`` new tasks and summarise the query metrics.

    Tasks are drawn in batches of ``batch_size`` (one compiled function, reused), each
    batch ``vmap``-ed over ``learner.evaluate``. For gradient-based learners the metrics
    are reported before adaptation and after each of ``num_steps`` inner steps.

    Args:
        learner: a :class:`~metajax.learner.Learner`.
        params: meta-parameters.
        task: the (held-out) task distribution.
        key: PRNG key; the same key gives the same tasks.
        num_tasks: tasks to average over (the literature uses at least 600).
        num_steps: inner steps at test time; ``None`` is the learner's default.
        batch_size: tasks per compiled batch.
        task_batching: ``"vmap"``, ``"map"`` (one task at a time), or ``None`` for the
            per-backend choice of :func:`~metajax.training.resolve_task_batching`.
        model_state: a :class:`~metajax.learner.Stateful` learner's state from meta-training
            (``TrainState.model_state``, e.g. the running batch-norm statistics that
            normalise every input with ``bn="running"``); ``None`` or ``{}``: none.

    Returns:
        ``{"num_tasks": n, "num_steps": s, metric: {"mean": [...], "ci95": [...], "nonfinite": [...]}}``:
        one entry per adaptation step (``s + 1`` values, the first before adaptation; one
        value for learners without inner steps). ``ci95`` is ``1.96 * std / sqrt(n)``;
        ``nonfinite`` counts the tasks whose value is NaN or infinite (an inner loop that
        diverged on them), which make that step's mean non-finite.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
        raise ValueError(f"num_tasks must be an integer >= 2 (for an interval), got {num_tasks!r}.")
    check_positive_int("batch_size", batch_size)
    check_conforms(learner, Learner)
    validate_episode(jax.eval_shape(lambda k: task.sample(k, 2), key), batched=True, name="the task's episodes")
    learner_ways, task_ways = getattr(learner, "ways", None), getattr(task, "ways", None)
    if isinstance(learner_ways, int) and isinstance(task_ways, int) and task_ways > learner_ways:
        raise ValueError(
            f"learner ways={learner_ways} cannot classify the task's labels 0..{task_ways - 1} "
            f"(task ways={task_ways}); build the test learner with the test task's ways."
        )
    if model_state and not isinstance(learner, Stateful):
        raise TypeError(
            f"model_state holds arrays; {type(learner).__name__} keeps no state (metajax.learner.Stateful), "
            "pass model_state=None."
        )
    # Only a learner with state is handed one, so every other learner's evaluate keeps its signature.
    extra = {"model_state": model_state} if model_state else {}
    task_batching = resolve_task_batching(learner, task, task_batching)
    if num_steps is not None:
        check_positive_int("num_steps", num_steps, allow_zero=True)
    batch_size = min(batch_size, num_tasks)

    task_arrays, rebuild_task = partition(task)

    @jax.jit
    def run(params, extra, key, task_arrays):
        k_tasks, k_learn = jax.random.split(key)
        episodes = rebuild_task(task_arrays).sample(k_tasks, batch_size)
        keys = jax.random.split(k_learn, batch_size)

        def one(episode, k):
            return learner.evaluate(params, episode, k, num_steps, **extra)

        if task_batching == "vmap":
            return jax.vmap(one)(episodes, keys)
        return jax.lax.map(lambda ek: one(*ek), (episodes, keys))

    chunks = []
    for k in jax.random.split(key, math.ceil(num_tasks / batch_size)):
        chunks.append(jax.device_get(run(params, extra, k, task_arrays)))
    per_task = jax.tree.map(lambda *xs: np.concatenate(xs)[:num_tasks], *chunks)
    summary: dict[str, Any] = {"num_tasks": num_tasks}
    for name, values in per_task.items():
        per_step = np.reshape(values, (num_tasks, -1))
        mean, ci95 = confidence_interval(per_step)
        summary["num_steps"] = mean.size - 1
        nonfinite = (~np.isfinite(per_step)).sum(0)
        summary[name] = {"mean": mean.tolist(), "ci95": ci95.tolist(), "nonfinite": nonfinite.tolist()}
    return summary


def confidence_interval(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% half-width ``1.96 * std / sqrt(n)`` over the first axis.

    Args:
        values: ``[n, ...]`` samples (``n >= 2``).

    Returns:
        ``(mean, ci95)``, each of shape ``values.shape[1:]``.
    """
    values = np.asarray(values, np.float64)
    if values.shape[0] < 2:
        raise ValueError(f"confidence_interval needs at least 2 samples, got {values.shape[0]}.")
    with np.errstate(invalid="ignore"):  # an infinite sample: mean inf, interval NaN, no warning
        return values.mean(0), 1.96 * values.std(0, ddof=1) / math.sqrt(values.shape[0])


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``0.5 < p < 1``) of Student's t distribution with ``df`` degrees of freedom.

    By bisection on its CDF, integrated numerically (Simpson's rule over the density written
    with ``lgamma``), so no statistics package is needed; accurate to about 1e-6.
    """
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}.")
    check_positive_int("df", df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # t >= 0; x = atan-spaced nodes keep the heavy tail of df = 1 accurate
        u = np.linspace(0.0, math.atan(t), 4001)
        x = np.tan(u)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x**2 / df)) * (1 + x**2)  # dx = (1 + x^2) du
        h = u[1] - u[0]
        return 0.5 + h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def seed_interval(values: Any) -> dict[str, list[float]]:
    """Mean, standard deviation and Student-t 95% half-width across seeds (the first axis).

    Args:
        values: ``[seeds, ...]`` one value per seed (``seeds >= 2``), e.g. each seed's mean accuracy.

    Returns:
        ``{"mean", "std", "ci95"}``, each a list over ``values.shape[1:]`` (flattened).
    """
    values = np.asarray(values, np.float64)
    if values.ndim < 1 or values.shape[0] < 2:
        raise ValueError(f"seed_interval needs at least 2 seeds, got shape {values.shape}.")
    n = values.shape[0]
    std = values.std(0, ddof=1)
    ci95 = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return {k: np.ravel(v).tolist() for k, v in (("mean", values.mean(0)), ("std", std), ("ci95", ci95))}
