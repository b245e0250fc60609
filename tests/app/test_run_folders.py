"""A run folder belongs to one run: refused unless resumed or overwritten; resuming keeps the settings."""

import json
import os
import re
import sys

import pytest

from metajax.app import cli
from metajax.checkpoint import Checkpointer

TINY = "train --shots 2 --meta-batch 2 --steps 2 --steps-per-call 1 --log-every 1 --checkpoint-every 1"
TINY_EVAL = "--eval-tasks 2 --eval-steps 1 --no-progress"
CONTINUAL = "continual --stream sine --tasks 2 --train-per-task 10 --test-per-task 5 --batch-size 5"


def train(out, *extra: str) -> int:
    """``metajax train`` of a 2-step sinusoid MAML run into ``out``."""
    return cli.main([*TINY.split(), *TINY_EVAL.split(), *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert train(out) == 0
    return out


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_holding_a_run_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    (out / "notes.txt").write_text("mine")
    (out / "eval.json").write_text("{}")
    before = _snapshot(out)
    with pytest.raises(SystemExit) as info:
        train(out, "--seed", "1")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "metajax train: --out" in err and "already holds a run (metrics.json, log.jsonl, checkpoints)" in err
    assert _snapshot(out) == before  # nothing touched
    assert train(out, "--seed", "1", "--steps", "1", "--overwrite") == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 1
    assert Checkpointer(out / "checkpoints", every=1).steps() == [1]  # the old run's 1 and 2 are gone
    assert (out / "notes.txt").read_text() == "mine" and not (out / "eval.json").exists()
    with pytest.raises(SystemExit, match="--overwrite would delete the run --resume"):
        train(out, "--resume", str(out), "--overwrite")


def test_out_that_is_a_file_or_not_writable_is_refused(tmp_path, monkeypatch):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(SystemExit, match=f"--out {file} exists as a file; pass a directory."):
        train(file)
    with pytest.raises(SystemExit, match=f"--out {file / 'sub'}: {file} exists as a file; pass a directory."):
        train(file / "sub")
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else access(p, mode))
    with pytest.raises(SystemExit, match=f"--out {tmp_path / 'new'}: {tmp_path} is not writable"):
        train(tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("option", "module", "message"),
    [
        ("--tensorboard", "tensorboardX", '--tensorboard needs tensorboardX: pip install "metajax[tensorboard]".'),
        ("--wandb", "wandb", '--wandb needs wandb: pip install "metajax[wandb]".'),
    ],
)
def test_a_logger_without_its_package_is_refused_before_the_folder_is_touched(
    run, tmp_path, monkeypatch, option, module, message
):
    monkeypatch.setitem(sys.modules, module, None)  # import <module> raises ImportError
    before = _snapshot(run)
    with pytest.raises(SystemExit, match=re.escape(message)):
        train(run, "--resume", str(run), "--steps", "3", option)
    assert _snapshot(run) == before
    with pytest.raises(SystemExit, match=re.escape(message)):
        train(tmp_path / "new", option)
    assert not (tmp_path / "new").exists()


def test_wandb_flags_without_wandb_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--wandb-mode sets the Weights & Biases run of --wandb; pass --wandb too."):
        train(tmp_path / "new", "--wandb-mode", "offline")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--inner-lr", "0.5"], "'inner_lr': (0.01, 0.5)"),
        (["--seed", "3"], "'seed': (0, 3)"),
        (["--algo", "fomaml"], "'algo': ('maml', 'fomaml')"),
        (["--meta-batch", "3"], "'meta_batch': (2, 3)"),
        (["--shots", "3"], "'shots': (2, 3)"),
    ],
)
def test_resume_refuses_other_settings(run, tmp_path, argv, setting):
    with pytest.raises(SystemExit) as info:
        train(tmp_path / "copy", "--resume", str(run), *argv)
    refused = "ran with other settings (setting: (earlier, now) = {" + setting + "}); only --out, --steps"
    assert refused in str(info.value)
    assert not (tmp_path / "copy").exists()


def test_resume_refuses_fewer_steps_than_its_checkpoint(run, tmp_path):
    with pytest.raises(SystemExit, match=r"--steps 1 is below the step 2 of --resume .*'s checkpoint; pass --steps 2"):
        train(tmp_path / "copy", "--resume", str(run), "--steps", "1")


def test_resume_with_more_steps_says_what_changed_and_drops_a_torn_log_line(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    with (run / "log.jsonl").open("a") as f:  # a run killed while appending its log
        f.write('{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match=r"log.jsonl line 3 is cut short"):
        assert train(copy, "--resume", str(run), "--steps", "4", "--eval-tasks", "3", "--time-limit", "5") == 0
    err = capsys.readouterr().err
    assert f"metajax train: resuming {run} from step 2 with --eval-tasks 3 (was 2)" in err
    assert "--steps 4 (was 2)" in err and "--time-limit 5.0 (was None)" in err
    metrics = json.loads((copy / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train"]["curve"]] == [1, 2, 3, 4]
    assert [json.loads(line)["step"] for line in (copy / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    (copy / "log.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(SystemExit, match=r"log.jsonl line 2 is not JSON"):
        train(copy, "--resume", str(copy), "--steps", "5")


def test_continual_keeps_a_finished_run_unless_overwritten(tmp_path, capsys):
    out = tmp_path / "continual"
    argv = [*CONTINUAL.split(), "--learners", "finetune", "--out", str(out)]
    assert cli.main(argv) == 0
    before = _snapshot(out)
    with pytest.raises(SystemExit) as info:
        cli.main([*argv[:-3], "ewc", "--out", str(out)])
    assert info.value.code == 2 and "already holds a run (metrics.json" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert cli.main([*argv[:-3], "ewc", "--out", str(out), "--overwrite"]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["learners"]) == ["ewc"]


def test_step_picks_the_checkpoint_to_resume_or_evaluate(tmp_path, capsys):
    run = tmp_path / "run"  # its own run: the module's shared one has a torn log line by now
    assert train(run) == 0
    assert Checkpointer(run / "checkpoints", every=1).steps() == [1, 2]
    assert cli.main(["eval", str(run), "--eval-tasks", "2", "--step", "1"]) == 0
    assert json.loads((run / "eval.json").read_text())["checkpoint_step"] == 1
    with pytest.raises(SystemExit):
        cli.main(["eval", str(run), "--eval-tasks", "2", "--step", "7"])
    assert "--step 7: no checkpoint at that step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train(tmp_path / "lone", "--step", "1")
    assert "--step 1 picks the checkpoint --resume continues from" in capsys.readouterr().err
    # From step 1 to the run's 2 steps again: the same parameters, so the same evaluation.
    assert train(tmp_path / "again", "--resume", str(run), "--step", "1") == 0
    assert "resuming" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["eval"]
    assert again == json.loads((run / "metrics.json").read_text())["eval"]


def test_eval_falls_back_past_a_corrupt_newest_record(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    (out / "checkpoints" / "2" / "record" / "metadata").write_text('{"seed": 0')  # a torn write
    with pytest.warns(RuntimeWarning, match="could not be read .*trying an older one"):
        assert cli.main(["eval", str(out), "--eval-tasks", "2"]) == 0
    assert json.loads((out / "eval.json").read_text())["checkpoint_step"] == 1
    assert "could not be read" in capsys.readouterr().err
