"""``metajax continual`` writes metrics.json; the Fashion-MNIST loader checks its files."""

import argparse
import json
from pathlib import Path

import pytest

from metajax.app import continual as continual_cli
from metajax.datasets import load_fashion_mnist


def _parse(argv):
    parser = argparse.ArgumentParser(prog="metajax")
    continual_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["continual", *argv])


def test_continual_writes_metrics_on_sine(tmp_path):
    args = _parse(
        [
            "--stream",
            "sine",
            "--learners",
            "finetune",
            "replay",
            "--tasks",
            "3",
            "--train-per-task",
            "8",
            "--test-per-task",
            "8",
            "--batch-size",
            "4",
            "--lr",
            "0.01",
            "--out",
            str(tmp_path),
        ]
    )
    result = continual_cli.run(args)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metric"] == "mse" and set(written["learners"]) == {"finetune", "replay"}
    assert len(written["learners"]["replay"]["R"]) == 4 and "online_mse" in written["learners"]["finetune"]
    assert result["machine"]["backend"] == "cpu"
    assert "finetune" in continual_cli.table(result)


def test_bad_values_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--batch-size 7 must divide --train-per-task 200"):
        continual_cli.run(_parse(["--batch-size", "7", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit, match=r"--p-stay must be in \[0, 1\], got 2.0"):
        continual_cli.run(_parse(["--p-stay", "2", "--out", str(tmp_path)]))


def _fashion_root(data_root: Path) -> Path:
    if not (data_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found under {data_root}")
    return data_root


def test_fashion_mnist_is_class_major(data_root):
    data = load_fashion_mnist("test", root=_fashion_root(data_root))
    assert data.images.shape == (10, 1000, 28, 28, 1) and data.images.dtype == "uint8"
    assert data.names[0] == "T-shirt/top"


def test_fashion_mnist_missing_file_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz not found in .*zalandoresearch"):
        load_fashion_mnist("test", root=tmp_path)


def test_fashion_mnist_corrupt_file_names_the_file_the_md5_and_the_source(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not the official file")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is corrupt .* md5 bef4ecab.*zalandoresearch"):
        load_fashion_mnist("test", root=tmp_path)


def test_lifelong_on_fashion_mnist(tmp_path, data_root):
    args = _parse(
        [
            "--lifelong",
            "--learners",
            "oml",
            "ewc",
            "--tasks",
            "2",
            "--train-per-task",
            "20",
            "--test-per-task",
            "20",
            "--stream-steps",
            "12",
            "--meta-steps",
            "2",
            "--hidden",
            "8",
            "--mixture",
            "0.4",
            "0.4",
            "0.2",
            "--ood-tasks",
            "1",
            "--data-root",
            str(_fashion_root(data_root)),
            "--out",
            str(tmp_path),
        ]
    )
    result = continual_cli.run(args)
    assert result["schedule"]["steps"] == 12 and (tmp_path / "R_ewc.png").is_file()
    assert 0.0 <= result["learners"]["oml"]["online_accuracy"] <= 1.0


def test_sine_stream_defaults_stay_finite(tmp_path):
    from metajax.app import cli

    argv = ["continual", "--stream", "sine", "--learners", "ewc", "lamaml", "--tasks", "3", "--train-per-task", "50",
            "--test-per-task", "20", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["lr"] == 0.003 and metrics["config"]["ewc_strength"] == 1.0


def _kill_then_resume(monkeypatch, argv, out, kill_after):
    """``(partial metrics.json, resumed results)`` of a run killed after the checkpoint where ``kill_after`` holds.

    ``kill_after(checkpointer, state)`` is asked after every ``Checkpointer.maybe_save``.
    """
    from metajax.checkpoint import Checkpointer

    save = Checkpointer.maybe_save

    def killed(self, state, *args, **kwargs):
        saved = save(self, state, *args, **kwargs)
        if kill_after(self, state):
            raise RuntimeError("killed")
        return saved

    monkeypatch.setattr(Checkpointer, "maybe_save", killed)
    with pytest.raises(RuntimeError, match="killed"):
        continual_cli.run(_parse([*argv, "--out", str(out)]))
    monkeypatch.undo()
    partial = json.loads((out / "metrics.json").read_text())
    return partial, continual_cli.run(_parse([*argv, "--out", str(out), "--resume", str(out)]))


def test_killed_run_resumes_to_the_same_results(tmp_path, data_root, monkeypatch):
    argv = ["--learners", "finetune", "oml", "--tasks", "2", "--train-per-task", "20", "--test-per-task", "20",
            "--meta-steps", "20", "--hidden", "8", "--data-root", str(_fashion_root(data_root))]  # fmt: skip
    whole = continual_cli.run(_parse([*argv, "--out", str(tmp_path / "whole")]))
    assert whole["pending"] == [] and whole["learners"]["oml"]["meta_train"]["resumed_from"] == 0

    partial, resumed = _kill_then_resume(
        monkeypatch, argv, tmp_path / "killed", lambda checkpointer, state: int(state.step) == 10
    )
    assert list(partial["learners"]) == ["finetune"] and partial["pending"] == ["oml"]
    assert resumed["learners"]["finetune"] == partial["learners"]["finetune"]  # kept, not run again
    assert resumed["learners"]["oml"]["meta_train"]["resumed_from"] == 10
    for name in ("finetune", "oml"):
        drop = ("seconds", "meta_train")
        assert {k: v for k, v in resumed["learners"][name].items() if k not in drop} == {
            k: v for k, v in whole["learners"][name].items() if k not in drop
        }
    with pytest.raises(SystemExit, match=r"other settings .*'hidden': \(8, 16\)"):
        continual_cli.run(
            _parse([*argv, "--hidden", "16", "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "killed")])
        )
    with pytest.raises(SystemExit, match="holds no metrics.json"):
        continual_cli.run(_parse([*argv, "--out", str(tmp_path / "c"), "--resume", str(tmp_path / "nothing")]))


def test_pass_killed_mid_stream_resumes_from_its_last_chunk(tmp_path, monkeypatch):
    argv = ["--stream", "sine", "--learners", "finetune", "replay", "--tasks", "3", "--train-per-task", "8",
            "--test-per-task", "8", "--batch-size", "4", "--hidden", "8", "--chunk-steps", "2"]  # fmt: skip
    whole = continual_cli.run(_parse([*argv, "--out", str(tmp_path / "whole")]))
    partial, resumed = _kill_then_resume(
        monkeypatch,
        argv,
        tmp_path / "killed",
        lambda checkpointer, state: checkpointer.directory.name == "stream-replay" and int(state.step) == 4,
    )
    assert list(partial["learners"]) == ["finetune"] and partial["pending"] == ["replay"]
    assert resumed["learners"]["replay"]["stream_resumed_from"] == 4
    assert whole["learners"]["replay"]["stream_resumed_from"] == 0
    drop = ("seconds", "stream_resumed_from")
    for name in ("finetune", "replay"):
        assert {k: v for k, v in resumed["learners"][name].items() if k not in drop} == {
            k: v for k, v in whole["learners"][name].items() if k not in drop
        }
    with pytest.raises(SystemExit, match=r"other settings .*'chunk_steps': \(2, 3\)"):
        continual_cli.run(
            _parse([*argv, "--chunk-steps", "3", "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "killed")])
        )
