"""Figures of a run: training curve, metric per adaptation step, sinusoid fits, accuracy matrices.

Every function returns a ``matplotlib.figure.Figure`` drawn on its own Agg canvas, so
nothing here touches pyplot's global backend or needs a display; in a notebook the
returned figure shows itself as the cell's value. ``path=`` saves it as well (PNG, PDF,
... by extension).

Example:
    >>> from metajax import plots                                   # doctest: +SKIP
    >>> plots.plot_run("runs/sinusoid-maml")                         # doctest: +SKIP
    [PosixPath('runs/sinusoid-maml/training_curve.png'), PosixPath('runs/sinusoid-maml/adaptation.png')]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metajax._io import read_json_lines
from metajax.continual.plots import plot_accuracy_matrix

# Entries of a training-curve record that are not metrics of the learner.
_CURVE_BOOKKEEPING = ("step", "tasks_per_s", "elapsed_s")


def load_metrics(metrics_or_dir: str | os.PathLike | Mapping) -> dict:
    """A run's ``metrics.json`` as a dict.

    Args:
        metrics_or_dir: the dict itself (returned as is), a ``metrics.json`` / ``eval.json``
            file, or a run folder (the ``--out`` of ``metajax train`` or ``metajax continual``).

    Returns:
        The parsed JSON object.

    Raises:
        FileNotFoundError: no such file, or the folder holds no ``metrics.json`` (the path is named).
        ValueError: the file is not valid JSON.
    """
    if isinstance(metrics_or_dir, Mapping):
        return dict(metrics_or_dir)
    path = Path(metrics_or_dir)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No metrics file at {path}: pass a run folder (the --out of `metajax train` or "
            f"`metajax continual`, holding metrics.json once the run has finished) or a metrics.json file."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); was the run interrupted while writing it?") from error


def _curve(source) -> list[dict]:
    """The training-curve entries of a run, a metrics dict, or ``metajax.train``'s history list."""
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        curve = list(source)
    else:
        metrics = load_metrics(source)
        try:
            curve = metrics["train"]["curve"]
        except (KeyError, TypeError):
            raise ValueError(
                f"metrics must hold train.curve (the metrics.json of `metajax train`), got keys {sorted(metrics)}."
            ) from None
    if not curve:
        raise ValueError(
            "The training curve is empty: no entry was logged "
            "(was the logging interval larger than the number of steps?)."
        )
    return curve


def _eval_summary(source) -> dict:
    """The ``eval`` part of a run, or the dict ``metajax.evaluate`` returns."""
    metrics = load_metrics(source)
    summary = metrics.get("eval", metrics)
    if not isinstance(summary, Mapping) or "num_tasks" not in summary:
        raise ValueError(
            "metrics must be the metrics.json of `metajax train`, an eval.json of `metajax eval`, or the "
            f"result of metajax.evaluate (with num_tasks and per-metric mean/ci95), got keys {sorted(metrics)}."
        )
    return dict(summary)


def _primary_metric(summary: Mapping) -> str:
    names = [k for k, v in summary.items() if isinstance(v, Mapping) and "mean" in v]
    if not names:
        raise ValueError(f"The evaluation holds no metric with mean/ci95, got keys {sorted(summary)}.")
    for preferred in ("accuracy", "mse"):
        if preferred in names:
            return preferred
    return names[0]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path: str | os.PathLike | None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_training_curve(
    metrics_or_dir: str | os.PathLike | Mapping | Sequence[Mapping],
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
):
    """Meta-training loss (and any other logged metric) against the meta-step.

    One panel for the loss (log scale when it is positive and spans a decade), and one per
    logged metric that is not the loss itself (``accuracy`` for classification; on
    regression ``mse`` is the loss, so there is one panel).

    Args:
        metrics_or_dir: a run folder, a ``metrics.json`` path or dict (its ``train.curve``:
            a list of ``{step, loss, <metric>, tasks_per_s, elapsed_s}``), or the history
            list that ``metajax.train`` returns.
        path: where to save the figure; ``None`` to only return it.
        title: figure title (default: algorithm and task from the run's config, if known).

    Returns:
        The ``matplotlib.figure.Figure``, one ``Axes`` per panel, one line each.

    Example:
        >>> state, history = metajax.train(learner, task, optax.adam(1e-3), key=key,
        ...                                num_steps=1000, meta_batch=25)   # doctest: +SKIP
        >>> fig = plot_training_curve(history)                              # doctest: +SKIP
    """
    curve = _curve(metrics_or_dir)
    steps = np.array([e["step"] for e in curve], np.float64)
    loss = np.array([e["loss"] for e in curve], np.float64)
    panels = [("loss", loss)]
    for name in curve[0]:
        if name in _CURVE_BOOKKEEPING or name == "loss":
            continue
        values = np.array([e.get(name, math.nan) for e in curve], np.float64)
        if not np.allclose(values, loss, equal_nan=True):
            panels.append((name, values))
    fig = _new_figure(4.0 * len(panels) + 0.5, 3.2)
    for i, (name, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_xlabel("meta-step")
        ax.set_ylabel(f"training {name}")
        finite = values[np.isfinite(values)]
        # A log scale only where the loss spans more than a decade; else its ticks say little.
        if name == "loss" and finite.size and finite.min() > 0 and finite.max() > 10 * finite.min():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if title is None and isinstance(metrics_or_dir, (Mapping, str, os.PathLike)):
        config = load_metrics(metrics_or_dir).get("config") or {}
        if "algo" in config and "task" in config:
            title = f"{config['algo']} on {config['task']}"
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_adaptation(
    metrics_or_dir: str | os.PathLike | Mapping,
    path: str | os.PathLike | None = None,
    *,
    metric: str | None = None,
    title: str | None = None,
):
    """Meta-test metric against the number of adaptation steps, with its 95% interval as a band.

    Args:
        metrics_or_dir: a run folder, a ``metrics.json`` / ``eval.json`` path or dict, or the
            dict ``metajax.evaluate`` returns (``{metric: {"mean": [S + 1], "ci95": [S + 1]}, ...}``);
            or a mapping ``{label: one of those}`` to overlay several runs, one line and band each.
        path: where to save the figure; ``None`` to only return it.
        metric: which metric to draw; ``None`` for ``accuracy``, else ``mse``, else the first.
        title: axes title (default: the number of test tasks).

    Returns:
        The ``matplotlib.figure.Figure`` with one ``Axes``: per run one line of the mean
        (step 0 is before adaptation) and one band ``mean +- ci95``. A learner without inner
        steps (ProtoNet) has a single point with an error bar.

    Example:
        >>> result = metajax.evaluate(learner, params, task, key=key, num_tasks=600, num_steps=10)  # doctest: +SKIP
        >>> fig = plot_adaptation(result)                                                            # doctest: +SKIP
        >>> fig = plot_adaptation({"MAML": "runs/maml", "FOMAML": "runs/fomaml"})                   # doctest: +SKIP
    """
    runs = _labelled_runs(metrics_or_dir)
    fig = _new_figure(5.0, 3.5)
    ax = fig.add_subplot()
    names = set()
    for label, summary in runs.items():
        name = metric or _primary_metric(summary)
        if name not in summary:
            raise ValueError(f"metric {name!r} is not in the evaluation; it has {sorted(summary)}.")
        mean = np.asarray(summary[name]["mean"], np.float64)
        ci95 = np.asarray(summary[name]["ci95"], np.float64)
        steps = np.arange(mean.size)
        if mean.size == 1:
            ax.errorbar(steps, mean, yerr=ci95, fmt="o", capsize=4, label=label)
        else:
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
            ax.fill_between(steps, mean - ci95, mean + ci95, color=line.get_color(), alpha=0.25, linewidth=0)
        names.add(name)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel(" / ".join(sorted(names)) + " (mean, 95% interval)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if len(runs) > 1 or next(iter(runs)) is not None:
        ax.legend()
    if title is None:
        counts = sorted({s["num_tasks"] for s in runs.values()})
        title = f"meta-test on {', '.join(map(str, counts))} new tasks"
    ax.set_title(title)
    return _finish(fig, path)


def _labelled_runs(source) -> dict:
    """``{label or None: eval summary}`` for one run or a mapping of labelled runs."""
    if isinstance(source, Mapping) and source and not ({"eval", "num_tasks", "config"} & set(source)):
        return {str(label): _eval_summary(run) for label, run in source.items()}
    return {None: _eval_summary(source)}


def plot_sinusoid_fits(
    learner: Any,
    params: Any,
    task: Any,
    key,
    num_tasks: int = 3,
    steps: Sequence[int] = (0, 1, 10),
    path: str | os.PathLike | None = None,
    *,
    points: int = 200,
):
    """True sine, support points, and the learner's predictions after ``k`` adaptation steps, per task.

    Draws ``task.sample(key, num_tasks)`` and its true functions ``task.curve(key, ...)``,
    adapts ``learner`` on each task's support set with ``num_steps=k`` for every ``k`` in
    ``steps`` (``0`` is the meta-learned initialisation) and predicts on a grid of
    ``points`` inputs spanning ``task.x_range``.

    Args:
        learner: a gradient-based learner (``adapt(params, (x, y), key, num_steps)`` and
            ``predict(adapted, x)``), e.g. ``metajax.MAML``.
        params: its meta-parameters.
        task: a ``metajax.tasks.Sinusoid`` (anything with ``sample``, ``curve`` and ``x_range``).
        key: PRNG key of the tasks drawn.
        num_tasks: tasks to draw, one panel each.
        steps: adaptation steps to show, one line each.
        path: where to save the figure; ``None`` to only return it.
        points: grid size of the curves.

    Returns:
        The ``matplotlib.figure.Figure``: ``num_tasks`` ``Axes``, each with ``1 + len(steps)``
        lines (the true curve first, then one per ``k``) and the support points as a scatter.

    Example:
        >>> task = metajax.tasks.Sinusoid(shots=5)                                      # doctest: +SKIP
        >>> fig = plot_sinusoid_fits(learner, state.params, task, jax.random.key(3))   # doctest: +SKIP
    """
    import jax
    import jax.numpy as jnp

    if not hasattr(task, "curve"):
        raise TypeError(f"plot_sinusoid_fits needs a task with a curve() method (tasks.Sinusoid), got {task!r}.")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}.")
    steps = tuple(steps)
    if not steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
        raise ValueError(f"steps must be a non-empty sequence of non-negative integers, got {steps!r}.")

    episodes = task.sample(key, num_tasks)
    lo, hi = task.x_range
    xs = jnp.linspace(lo, hi, points, dtype=episodes.support_x.dtype)[:, None]  # [points, 1]
    truth = np.asarray(task.curve(key, num_tasks, xs))[..., 0]  # [num_tasks, points]
    adapt_keys = jax.random.split(jax.random.fold_in(key, 1), num_tasks)

    def fit(k):
        def one(sx, sy, k_adapt):
            adapted = learner.adapt(params, (sx, sy), k_adapt, num_steps=k)
            return learner.predict(adapted, xs)

        return np.asarray(jax.jit(jax.vmap(one))(episodes.support_x, episodes.support_y, adapt_keys))[..., 0]

    predictions = {k: fit(k) for k in steps}  # k -> [num_tasks, points]
    grid = np.asarray(xs[:, 0])
    sx, sy = np.asarray(episodes.support_x)[..., 0], np.asarray(episodes.support_y)[..., 0]
    fig = _new_figure(3.6 * num_tasks + 0.4, 3.2)
    for t in range(num_tasks):
        ax = fig.add_subplot(1, num_tasks, t + 1)
        ax.plot(grid, truth[t], color="k", linewidth=2, label="true function")
        for k in steps:
            ax.plot(grid, predictions[k][t], linestyle="--" if k == 0 else "-", label=f"after {k} step{'s' * (k != 1)}")
        ax.scatter(sx[t], sy[t], color="k", marker="^", zorder=3, label=f"support ({sx.shape[1]})")
        ax.set_xlabel("x")
        if t == 0:
            ax.set_ylabel("y")
            ax.legend(fontsize=7)
        ax.set_title(f"task {t + 1}")
        ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_run(out_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Write the figures of a run folder as PNGs; returns their paths.

    * ``metajax train`` runs: ``training_curve.png`` and ``adaptation.png`` (and
      ``adaptation_eval.png`` from ``eval.json`` when ``metajax eval`` was run).
    * ``metajax continual`` runs: ``R_<learner>.png``, the heatmap of each learner's
      accuracy (or MSE) matrix ``R [T + 1, T]``.

    Args:
        out_dir: the run folder (holding ``metrics.json``).
        out: folder to write into (created if missing); ``None`` for ``out_dir``.

    Returns:
        The paths written.

    Raises:
        FileNotFoundError: ``out_dir`` holds no ``metrics.json`` (the path is named).
        ValueError: the file is neither kind of run's metrics.

    Example:
        >>> plot_run("runs/sinusoid-maml")                                  # doctest: +SKIP
        [PosixPath('runs/sinusoid-maml/training_curve.png'), PosixPath('runs/sinusoid-maml/adaptation.png')]
    """
    run_dir = Path(out_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run folder {run_dir} does not exist: out_dir must be the output folder of a metajax run."
        )
    metrics = load_metrics(run_dir)
    target = run_dir if out is None else Path(out)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    if "learners" in metrics:
        metric = metrics.get("metric", "accuracy")
        for name, result in metrics["learners"].items():
            R = np.array([[math.nan if v is None else v for v in row] for row in result["R"]], np.float64)
            path = target / f"R_{name}.png"
            plot_accuracy_matrix(R, path, title=name, metric=metric)
            written.append(path)
        return written
    if "train" not in metrics or "eval" not in metrics:
        raise ValueError(
            f"{run_dir / 'metrics.json'} is neither a `metajax train` run (train, eval) nor a "
            f"`metajax continual` run (learners); it has keys {sorted(metrics)}."
        )
    for name, draw in (("training_curve.png", plot_training_curve), ("adaptation.png", plot_adaptation)):
        draw(metrics, target / name)
        written.append(target / name)
    if (run_dir / "eval.json").is_file():
        path = target / "adaptation_eval.png"
        plot_adaptation(run_dir / "eval.json", path)
        written.append(path)
    return written


def plot_benchmark(records: str | os.PathLike | Sequence[Mapping], path: str | os.PathLike | None = None):
    """Tasks/s of every measured configuration of a ``metajax bench`` run, one bar each (log scale).

    Bars are grouped by workload (and meta-batch, inner steps, ways, order); JAX
    configurations are labelled ``task batching / conv impl``, PyTorch ones by reference.
    The machine's CPU or device and the load average go into the title.

    Args:
        records: the JSON lines written by ``metajax bench --out FILE`` (a path), or their dicts.
        path: where to save the PNG, or ``None``.

    Returns:
        The ``matplotlib.figure.Figure``.

    Example:
        >>> plot_benchmark("bench.jsonl", "bench.png")  # doctest: +SKIP
    """
    if isinstance(records, str | os.PathLike):
        file = Path(records)
        if not file.is_file():
            raise FileNotFoundError(f"No benchmark records at {file}; write them with metajax bench --out FILE.")
        records = read_json_lines(file)
    results = [r for r in records if r.get("kind") == "result"]
    if not results:
        raise ValueError("The benchmark records hold no result lines (kind 'result').")
    machine = next((r for r in records if r.get("kind") == "machine"), {})

    def label(r):
        impl = f"{r.get('task_batching')}/{r.get('conv_impl')}" if r["impl"] == "jax" else r["impl"]
        shape = f"{r['workload']} B={r['meta_batch']} S={r['inner_steps']} N={r['ways']} {r['order']}"
        return f"{shape} | {impl}"

    results = sorted(results, key=label)
    fig = _new_figure(9.0, 0.35 * len(results) + 1.5)
    ax = fig.add_subplot()
    colors = ["tab:blue" if r["impl"] == "jax" else "tab:gray" for r in results]
    ax.barh(range(len(results)), [r["tasks_per_s"] for r in results], color=colors)
    ax.set_yticks(range(len(results)), [label(r) for r in results], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("tasks / s (median step after warm-up)")
    where = f"{machine.get('device', '?')} ({machine.get('processor', '?')}, {machine.get('cpu_count', '?')} cores)"
    load = machine.get("load_avg")
    load_text = f", load {load[0]:.1f}" if load else ""
    ax.set_title(f"metajax bench on {where}, jax {machine.get('jax', '?')}{load_text}", fontsize=9)
    ax.invert_yaxis()
    return _finish(fig, path)
