"""Figures of runs (``metajax.plots``) and the ``metajax plot`` subcommand."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest
from PIL import Image

import metajax
from helpers import one_task
from metajax import models, plots
from metajax.app import plot
from metajax.app.cli import main

EVAL_STEPS = 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny ``metajax train`` run on sinusoid: 20 meta-steps, two logged entries, 10 test tasks."""
    out = tmp_path_factory.mktemp("plots") / "run"
    argv = ["train", "--steps", "20", "--steps-per-call", "10", "--log-every", "10", "--eval-tasks", "10"]
    argv += ["--eval-steps", str(EVAL_STEPS), "--checkpoint-every", "0", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    return out


def assert_png(path):
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100
        image.verify()


def continual_metrics(metric="accuracy"):
    """The shape of ``metajax continual``'s metrics.json, T = 2 tasks, one learner without an init row."""
    R = [[0.1, 0.2], [0.9, 0.3], [0.8, 0.95]]
    return {
        "config": {"stream": "rotated-fmnist"},
        "metric": metric,
        "learners": {"finetune": {"acc": 0.875, "R": R}, "joint": {"acc": 0.9, "R": [[None, None], *R[1:]]}},
    }


def test_plot_run_writes_train_figures(run_dir, tmp_path):
    written = plots.plot_run(run_dir, tmp_path / "figs")
    assert [p.name for p in written] == ["training_curve.png", "adaptation.png"]
    for path in written:
        assert_png(path)


def test_training_curve_from_run_and_history(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fig = plots.plot_training_curve(run_dir)
    (ax,) = fig.axes  # regression: mse is the loss, one panel
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_xdata(), [10, 20])
    np.testing.assert_allclose(line.get_ydata(), [e["loss"] for e in metrics["train"]["curve"]])
    assert fig._suptitle.get_text() == "maml on sinusoid"
    assert len(plots.plot_training_curve(metrics["train"]["curve"]).axes) == 1


def test_training_curve_adds_a_panel_per_other_metric():
    curve = [{"step": s, "loss": 1.0 / s, "accuracy": 1 - 1.0 / s, "tasks_per_s": 5.0, "elapsed_s": s} for s in (1, 2)]
    fig = plots.plot_training_curve(curve)
    assert [ax.get_ylabel() for ax in fig.axes] == ["training loss", "training accuracy"]
    with pytest.raises(ValueError, match="empty"):
        plots.plot_training_curve([])


def test_adaptation_band(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fig = plots.plot_adaptation(run_dir)
    (ax,) = fig.axes
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_xdata(), np.arange(EVAL_STEPS + 1))
    np.testing.assert_allclose(line.get_ydata(), metrics["eval"]["mse"]["mean"])
    assert len(ax.collections) == 1  # the 95% band
    assert "10 new tasks" in ax.get_title()
    # The result of metajax.evaluate, and several runs overlaid with a legend.
    overlay = plots.plot_adaptation({"a": metrics["eval"], "b": run_dir})
    assert len(overlay.axes[0].lines) == 2 and overlay.axes[0].get_legend() is not None
    with pytest.raises(ValueError, match="'accuracy' is not in the evaluation"):
        plots.plot_adaptation(run_dir, metric="accuracy")


def test_adaptation_single_step_learner():
    summary = {
        "num_tasks": 5,
        "num_steps": 0,
        "accuracy": {"mean": [0.9], "ci95": [0.02]},
        "loss": {"mean": [0.3], "ci95": [0.1]},
    }
    fig = plots.plot_adaptation(summary)
    assert "accuracy" in fig.axes[0].get_ylabel()
    assert len(fig.axes[0].containers) == 1  # an error bar, not a band


def test_sinusoid_fits():
    task = metajax.tasks.Sinusoid(shots=5)
    learner = metajax.MAML(models.MLP(hidden=(8,), out=1), inner_lr=0.01)
    params = learner.init(jax.random.key(0), one_task(task))
    fig = plots.plot_sinusoid_fits(learner, params, task, jax.random.key(1), num_tasks=2, steps=(0, 1))
    assert len(fig.axes) == 2
    episodes = task.sample(jax.random.key(1), 2)
    for t, ax in enumerate(fig.axes):
        truth, before, after = ax.lines
        grid = truth.get_xdata()
        # The support points lie on the true curve of the same task.
        sx, sy = np.asarray(episodes.support_x[t, :, 0]), np.asarray(episodes.support_y[t, :, 0])
        np.testing.assert_allclose(np.interp(sx, grid, truth.get_ydata()), sy, atol=0.02)
        np.testing.assert_allclose(ax.collections[0].get_offsets(), np.stack([sx, sy], 1), rtol=1e-6)
        # Zero steps is the meta-learned initialisation itself.
        expected = learner.predict(params, grid[:, None].astype(np.float32))[:, 0]
        np.testing.assert_allclose(before.get_ydata(), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(after.get_ydata(), before.get_ydata())


def test_sinusoid_fits_bad_input():
    task = metajax.tasks.Sinusoid(shots=5)
    learner = metajax.MAML(models.MLP(hidden=(8,), out=1))
    params = learner.init(jax.random.key(0), one_task(task))
    with pytest.raises(ValueError, match="steps must be"):
        plots.plot_sinusoid_fits(learner, params, task, jax.random.key(1), steps=(-1,))
    with pytest.raises(ValueError, match="num_tasks must be"):
        plots.plot_sinusoid_fits(learner, params, task, jax.random.key(1), num_tasks=0)
    with pytest.raises(TypeError, match="curve"):
        plots.plot_sinusoid_fits(learner, params, object(), jax.random.key(1))


@pytest.mark.parametrize("metric", ["accuracy", "mse"])
def test_plot_run_continual(tmp_path, metric):
    (tmp_path / "metrics.json").write_text(json.dumps(continual_metrics(metric)))
    written = plots.plot_run(tmp_path)
    assert [p.name for p in written] == ["R_finetune.png", "R_joint.png"]
    for path in written:
        assert_png(path)


def test_missing_or_bad_metrics_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "metrics.json")):
        plots.plot_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.plot_run(tmp_path / "nowhere")
    (tmp_path / "metrics.json").write_text('{"config": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        plots.plot_training_curve(tmp_path)
    (tmp_path / "metrics.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="neither"):
        plots.plot_run(tmp_path)
    with pytest.raises(ValueError, match="train.curve"):
        plots.plot_training_curve(tmp_path)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="metajax")
    plot.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_plot_subcommand(run_dir, tmp_path, capsys):
    written = plot.run(_parse(["plot", str(run_dir), "--out", str(tmp_path / "figs")]))
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"training_curve.png", "adaptation.png"}
    assert f"wrote {written[0]}" in capsys.readouterr().out
    from metajax.app import cli

    with pytest.raises(SystemExit, match=f"metajax plot: .*{tmp_path / 'metrics.json'}"):
        cli.main(["plot", str(tmp_path)])


def test_benchmark_plot_from_bench_records(tmp_path):
    from metajax.app import cli

    records = [
        {"kind": "machine", "device": "cpu", "processor": "x86_64", "cpu_count": 2, "jax": "0", "load_avg": [1.0]}
    ]
    for impl, speed in (("jax", 100.0), ("torch-loop", 10.0)):
        records.append({"kind": "result", "workload": "maml-sinusoid", "meta_batch": 25, "inner_steps": 1, "ways": 1,
                        "order": "second", "impl": impl, "task_batching": "vmap", "conv_impl": "none",
                        "tasks_per_s": speed})  # fmt: skip
    file = tmp_path / "bench.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plots.plot_benchmark(file)
    (ax,) = fig.axes
    assert sorted(p.get_width() for p in ax.patches) == [10.0, 100.0]
    assert "cpu (x86_64, 2 cores)" in ax.get_title()
    assert cli.main(["plot", str(file)]) == 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no result lines"):
        plots.plot_benchmark(records[:1])
