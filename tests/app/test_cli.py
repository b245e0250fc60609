"""The ``metajax train`` contract: metrics.json with config, curve and per-step eval."""

import json

import numpy as np
import pytest

from metajax.app import cli


def tiny_sinusoid_run(out, algo: str, evaluation: str) -> list[str]:
    """``metajax train`` arguments of a 20-step sinusoid run of ``algo`` writing to ``out``."""
    run = f"train --algo {algo} --shots 5 --meta-batch 4 --steps 20 --steps-per-call 10 --log-every 10 {evaluation}"
    return [*run.split(), "--out", str(out), "--no-progress"]


@pytest.mark.parametrize("algo", cli.GRADIENT_ALGORITHMS)
def test_train_writes_metrics(tmp_path, algo):
    out = tmp_path / algo
    code = cli.main(tiny_sinusoid_run(out, algo, "--eval-tasks 20 --eval-steps 3"))
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["algo"] == algo and metrics["config"]["shots"] == 5
    assert [e["step"] for e in metrics["train"]["curve"]] == [10, 20]
    assert len(metrics["eval"]["mse"]["mean"]) == 4 and len(metrics["eval"]["mse"]["ci95"]) == 4
    assert metrics["eval"]["num_tasks"] == 20
    assert metrics["machine"]["backend"] == "cpu"


@pytest.mark.parametrize("algo", ["protonet", "maml"])
def test_omniglot_train_writes_accuracy(tmp_path, monkeypatch, data_root, omniglot_cache, algo):
    monkeypatch.setenv("METAJAX_CACHE", str(omniglot_cache))
    out = tmp_path / algo
    argv = [
        "train",
        "--algo",
        algo,
        "--task",
        "omniglot",
        "--data-root",
        str(data_root),
        "--ways",
        "3",
        *(["--train-ways", "4"] if algo == "protonet" else []),  # maml's head has the training ways
        "--shots",
        "1",
        "--query",
        "2",
        "--filters",
        "4",
        "--meta-batch",
        "2",
        "--steps",
        "2",
        "--log-every",
        "1",
        "--eval-tasks",
        "4",
        "--eval-steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    accuracy = metrics["eval"]["accuracy"]["mean"]
    assert len(accuracy) == (1 if algo == "protonet" else 2)
    assert all(0.0 <= a <= 1.0 for a in accuracy)
    assert [e["step"] for e in metrics["train"]["curve"]] == [1, 2]


def test_metric_learner_on_regression_is_rejected(tmp_path):
    with pytest.raises(SystemExit, match="--algo protonet needs a classification task, not --task sinusoid"):
        cli.main(["train", "--algo", "protonet", "--steps", "1", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--inner-lr", "-1"], "--inner-lr must be positive, got -1.0"),
        (["--eval-tasks", "1"], "--eval-tasks must be at least 2, got 1"),
    ],
)
def test_bad_values_are_named(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["train", "--out", str(tmp_path), *argv])


def test_unknown_algorithm_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--algo", "mamlx", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "invalid choice: 'mamlx'" in capsys.readouterr().err


def test_resnet12_backbone_is_built(tmp_path):
    args = cli.build_parser().parse_args(
        ["train", "--algo", "protonet", "--task", "omniglot", "--backbone", "resnet12", "--out", str(tmp_path)]
    )
    learner = cli.build_learner(args, ways=5)
    assert type(learner.embed).__name__ == "ResNet12" and learner.ways == 5


def test_eval_reproduces_the_runs_evaluation_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = tiny_sinusoid_run(out, "maml", "--eval-tasks 8 --eval-steps 2")
    assert cli.main(argv) == 0
    assert cli.main(["eval", str(out), "--eval-tasks", "8"]) == 0
    trained = json.loads((out / "metrics.json").read_text())["eval"]
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["checkpoint_step"] == 20
    np.testing.assert_allclose(evaluated["eval"]["mse"]["mean"], trained["mse"]["mean"], rtol=1e-6)
    with pytest.raises(SystemExit, match="holds no checkpoints/ folder"):
        cli.main(["eval", str(tmp_path)])


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    from tensorboardX.proto import event_pb2

    out = tmp_path / "run"
    assert cli.main(tiny_sinusoid_run(out, "maml", "--eval-tasks 2 --eval-steps 1 --tensorboard")) == 0
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    raw, scalars = events.read_bytes(), {}
    while raw:  # TFRecord: uint64 length, uint32 crc, payload, uint32 crc
        length = int.from_bytes(raw[:8], "little")
        event = event_pb2.Event.FromString(raw[12 : 12 + length])
        raw = raw[16 + length :]
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["train/loss"]] == [10, 20]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [e["loss"] for e in log], rtol=1e-6)
