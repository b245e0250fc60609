"""The ``metajax train`` contract: metrics.json with config, curve and per-step eval."""

import json
import sys
from pathlib import Path

import jax
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
        (["--eval-tasks", "1"], r"--eval-tasks must be at least 2 \(a 95% interval needs two tasks\), got 1"),
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
    cli._fill_defaults(args)
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


RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
IMAML_RESULTS = (RESULTS / "sinusoid-imaml-k5.json", RESULTS / "omniglot-imaml-5w1s.json")


def test_imamls_flag_defaults_are_the_librarys_and_those_its_results_were_measured_with():
    import metajax

    args = cli.build_parser().parse_args(["train", "--algo", "imaml", "--out", "x"])
    cli._fill_defaults(args)
    assert cli.build_learner(args).meta_gradient == metajax.Implicit()  # no flags: the library's default
    for name in cli.LEARNER_FLAGS["imaml"]:
        for path in IMAML_RESULTS:  # the measured protocols used every default
            assert json.loads(path.read_text())["config"][name] == getattr(args, name), (path.name, name)


def test_eval_of_a_run_recorded_before_a_learner_flag_existed_uses_the_value_it_ran_with(tmp_path):
    import metajax
    from metajax.checkpoint import Checkpointer

    out = tmp_path / "run"
    assert cli.main(tiny_sinusoid_run(out, "imaml", "--eval-tasks 4 --eval-steps 1")) == 0
    record, args, _, state = cli.restore_run(out)
    assert (args.imaml_cg_damping, args.imaml_inner_clip) == (1000.0, 100.0)  # recorded: read back as they are
    checkpointer = Checkpointer(out / "checkpoints", every=1)
    # The record of a run from before --imaml-cg-damping and --imaml-inner-clip (iMAML then ran undamped, unclipped).
    checkpointer.save(state, {k: v for k, v in record.items() if k not in ("imaml_cg_damping", "imaml_inner_clip")})
    checkpointer.close()
    _, args, run, _ = cli.restore_run(out)
    assert (args.imaml_cg_damping, args.imaml_inner_clip) == (0.0, 0.0)
    assert run.learner.meta_gradient == metajax.Implicit(prox=1.0, cg_steps=5, damping=0.0)
    assert cli.main(["eval", str(out), "--eval-tasks", "4"]) == 0
    assert "imaml_cg_damping" not in json.loads((out / "eval.json").read_text())["config"]  # the record, as it is


def test_learners_are_evaluated_with_their_protocols_steps_and_warned_past_their_trained_ones(tmp_path, capsys):
    out = tmp_path / "metasgd"
    assert cli.main(tiny_sinusoid_run(out, "metasgd", "--eval-tasks 4")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["eval_steps"] == 1 and len(metrics["eval"]["mse"]["mean"]) == 2  # its one learned step
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["eval", str(out), "--eval-tasks", "4", "--eval-steps", "10"]) == 0
    warning = "metajax: warning: --algo metasgd was trained with --inner-steps 1 but is evaluated with --eval-steps 10"
    assert warning in capsys.readouterr().err
    out = tmp_path / "maml"  # MAML's protocol: 10 test steps after training with one, no warning
    assert cli.main(tiny_sinusoid_run(out, "maml", "--eval-tasks 4")) == 0
    assert len(json.loads((out / "metrics.json").read_text())["eval"]["mse"]["mean"]) == 11
    assert "warning" not in capsys.readouterr().err


def test_test_query_sets_the_test_episodes_and_eval_reads_or_replaces_it(tmp_path):
    import optax

    import metajax
    from metajax.checkpoint import Checkpointer

    out = tmp_path / "run"
    assert cli.main(tiny_sinusoid_run(out, "maml", "--query 3 --test-query 7 --eval-tasks 4 --eval-steps 1")) == 0
    trained = json.loads((out / "metrics.json").read_text())
    assert (trained["config"]["query"], trained["config"]["test_query"]) == (3, 7)
    assert cli.main(["eval", str(out), "--eval-tasks", "4"]) == 0  # the run's test episodes
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["config"]["test_query"] == 7
    np.testing.assert_allclose(evaluated["eval"]["mse"]["mean"], trained["eval"]["mse"]["mean"], rtol=1e-6)
    assert cli.main(["eval", str(out), "--eval-tasks", "4", "--test-query", "9"]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    # the reference: the library's evaluation of the checkpoint on tasks with 9 query points
    learner = metajax.MAML(metajax.models.MLP(hidden=(40, 40), out=1), inner_lr=0.01, inner_steps=1)
    train_task, test_task = metajax.tasks.Sinusoid(shots=5, queries=3), metajax.tasks.Sinusoid(shots=5, queries=9)
    like = metajax.init_state(learner, train_task, optax.adam(1e-3), jax.random.key(0))
    checkpointer = Checkpointer(out / "checkpoints", every=1)
    state, _ = checkpointer.restore(like=like)
    checkpointer.close()
    key = jax.random.split(jax.random.key(0))[1]  # the run's test key (seed 0)
    expected = metajax.evaluate(learner, state.params, test_task, key=key, num_tasks=4, num_steps=1)
    assert evaluated["config"]["test_query"] == 9
    np.testing.assert_allclose(evaluated["eval"]["mse"]["mean"], expected["mse"]["mean"], rtol=1e-6)


def test_test_query_of_image_tasks_is_checked_against_the_examples_per_class(tmp_path, monkeypatch):
    from metajax import tasks
    from metajax.tasks import Benchmark

    def benchmark(name, *, ways, shots, queries, root):  # 10 classes of 20 blank images, for the shapes only
        split = tasks.FewShot(np.zeros((10, 20, 4, 4, 1), np.uint8), ways=ways, shots=shots, queries=queries)
        return Benchmark(split, None, split)

    monkeypatch.setattr(tasks, "benchmark", benchmark)
    parse = cli.build_parser().parse_args
    args = parse(["train", "--task", "omniglot", "--shots", "1", "--query", "2", "--test-query", "15", "--out", "x"])
    cli._fill_defaults(args)
    train_task, test_task = cli.build_tasks(args)
    assert (train_task.queries, test_task.queries) == (2, 15)
    args = parse(["train", "--task", "omniglot", "--shots", "1", "--test-query", "20", "--out", "x"])
    cli._fill_defaults(args)
    with pytest.raises(
        SystemExit, match=r"--test-query 20: shots \+ queries must be at most the 20 examples per class"
    ):
        cli.build_tasks(args)


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


def _logged_scalars(out) -> dict[int, dict]:
    """``log.jsonl``'s numbers at each step, named as the loggers name them (``train/<name>``)."""
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    numbers = (int, float)
    return {e["step"]: {f"train/{k}": v for k, v in e.items() if k != "step" and isinstance(v, numbers)} for e in log}


def _wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): a LevelDB log of ``wandb_internal_pb2.Record``."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, block, records, pending, pos = path.read_bytes(), 32768, [], b"", 7
    assert raw[:4] == b":W&B"  # then the magic and version: 3 bytes
    while pos + 7 <= len(raw):
        room = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of the block is padding
            pos += room
            continue
        pending, pos = pending + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def test_wandb_offline_run_holds_the_logged_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    out = tmp_path / "run"
    argv = tiny_sinusoid_run(out, "maml", "--eval-tasks 2 --eval-steps 1 --wandb --wandb-mode offline")
    assert cli.main(argv) == 0
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = {}, {}
    for record in _wandb_records(run_file):
        if record.HasField("history"):
            # "train/loss" is stored as the nested key ("train", "loss")
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[record.history.step.num] = {k: v for k, v in items.items() if k.startswith("train/")}
        if record.HasField("run"):  # the run's start: its config
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert history == _logged_scalars(out) and sorted(history) == [10, 20]
    config.pop("_wandb")
    assert config == json.loads((out / "metrics.json").read_text())["config"]  # the run's settings
    assert config["wandb_mode"] == "offline"


def test_wandb_gets_the_documented_calls(tmp_path, monkeypatch):
    """Through a stand-in ``wandb`` module: ``init``, ``log`` per entry, ``finish`` (whether or not wandb is here)."""
    import types

    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    fake = types.ModuleType("wandb")
    fake.init, fake.errors = init, types.SimpleNamespace(Error=RuntimeError)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    assert cli.main(tiny_sinusoid_run(out, "maml", "--eval-tasks 2 --eval-steps 1 --wandb --wandb-project p")) == 0
    (_, kwargs), *logs, finish = calls
    assert kwargs["config"] == json.loads((out / "metrics.json").read_text())["config"]
    assert {k: v for k, v in kwargs.items() if k != "config"} == dict(
        project="p", name=str(out), mode=None, dir=str(out)
    )
    assert {step: data for _, data, step in logs} == _logged_scalars(out) and finish == ("finish",)

    def refused(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)")  # as wandb.errors.UsageError says it

    fake.init = refused
    with pytest.raises(SystemExit, match=r"--wandb: wandb.init\(project='metajax', mode=None\) failed: api_key"):
        cli.main(tiny_sinusoid_run(tmp_path / "other", "maml", "--eval-tasks 2 --wandb"))
    assert not (tmp_path / "other" / "log.jsonl").exists()


def test_summary_line_names_the_tasks_that_diverged():
    ev = {"num_tasks": 600, "num_steps": 10,
          "mse": {"mean": [3.0, 0.8] + [0.5] * 8 + [float("inf")], "ci95": [0.2] * 10 + [float("nan")],
                  "nonfinite": [0] * 10 + [1]}}  # fmt: skip
    line = cli._summary_line({"eval": ev})
    assert line.startswith("mse on 600 new tasks, step 0: 3.0000 +- 0.2000, step 1: 0.8000 +- 0.2000")
    assert line.endswith("step 10: inf +- nan (1 of 600 tasks non-finite)")
    del ev["mse"]["nonfinite"]  # a --seeds summary carries means only
    assert line.split(" (1 of")[0] == cli._summary_line({"eval": ev})
