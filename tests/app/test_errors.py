"""One error boundary: an expected error is one line ``metajax COMMAND: ...`` and exit status 2."""

import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from metajax.app import cli, errors

OUT = ["--out", "/nonexistent-metajax-run"]  # refused before anything is written


def _fails(argv, capsys) -> str:
    """The one line ``metajax ...`` prints for ``argv``, after checking exit status 2."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--meta-lr", "inf"], "metajax train: --meta-lr must be a finite number, got inf."),
        (["train", "--inner-lr", "nan"], "metajax train: --inner-lr must be a finite number, got nan."),
        (["train", "--seed", "-1"], "metajax train: --seed must be in [0, 2**32) (JAX uses 32 bits of it), got -1."),
        (["train", "--seed", str(2**32)], f"--seed must be in [0, 2**32) (JAX uses 32 bits of it), got {2**32}."),
        (
            ["eval", "run", "--eval-tasks", "0"],
            "metajax eval: --eval-tasks must be at least 2 (a 95% interval needs two tasks), got 0.",
        ),
        (["eval", "run", "--eval-steps", "-1"], "metajax eval: --eval-steps must be non-negative, got -1."),
        (["eval", "run", "--seed", "-5"], "metajax eval: --seed must be in [0, 2**32)"),
        (["eval", "run", "--test-query", "0"], "metajax eval: --test-query must be a positive integer, got 0."),
        (["train", "--test-query", "0"], "metajax train: --test-query must be a positive integer, got 0."),
        (
            ["train", "--algo", "imaml", "--imaml-cg-damping", "-1"],
            "metajax train: --imaml-cg-damping must be non-negative (0: off), got -1.0.",
        ),
        (
            ["train", "--algo", "imaml", "--imaml-inner-clip", "-2"],
            "metajax train: --imaml-inner-clip must be non-negative (0: off), got -2.0.",
        ),
        (["continual", "--mixture", "nan", "0.5", "0.5"], "continual: --mixture must be a finite number, got nan"),
        (["continual", "--ood-tasks", "-3"], "metajax continual: --ood-tasks must be a non-negative integer, got -3."),
    ],
)
def test_bad_values_are_one_line(argv, message, capsys):
    assert message in _fails([*argv, *(OUT if argv[0] != "eval" else [])], capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbone", "resnet12"], "--backbone does not apply to --task sinusoid; it sets the image tasks."),
        (["--filters", "8"], "--filters does not apply to --task sinusoid"),
        (["--data-root", "/data"], "--data-root does not apply to --task sinusoid"),
        (["--ways", "5"], "--ways does not apply to --task sinusoid"),
        (["--imaml-prox", "2"], "--imaml-prox applies to --algo imaml only, not --algo maml."),
        (["--algo", "reptile", "--imaml-cg-steps", "3"], "--imaml-cg-steps applies to --algo imaml only"),
        (["--algo", "anil", "--imaml-cg-damping", "1"], "--imaml-cg-damping applies to --algo imaml only"),
        (["--imaml-inner-clip", "1"], "--imaml-inner-clip applies to --algo imaml only, not --algo maml."),
        (
            ["--task", "omniglot", "--backbone", "resnet12", "--filters", "8"],
            "--filters sets the width of Conv4; --backbone resnet12 has fixed widths.",
        ),
        (
            ["--task", "omniglot", "--ways", "5", "--train-ways", "20"],
            "--train-ways 20 differs from --ways 5, but --algo maml has a fixed-size head",
        ),
        (
            ["--task", "omniglot", "--algo", "transformer", "--train-ways", "20"],
            "--train-ways 20 differs from --ways 5, but --algo transformer",
        ),
    ],
)
def test_flags_that_do_not_apply_are_refused(argv, message, capsys):
    assert f"metajax train: {message}" in _fails(["train", *argv, *OUT], capsys)


def test_metric_learners_may_train_on_more_ways():
    argv = ["train", "--algo", "protonet", "--task", "omniglot", "--train-ways", "20", *OUT]
    args = cli.build_parser().parse_args(argv)
    cli._check_args(args)
    assert (args.ways, args.train_ways, args.backbone, args.imaml_prox) == (5, 20, "conv4", 1.0)


def test_library_errors_are_one_line_with_the_flags_named(monkeypatch, capsys):
    def raises(error):
        def command(args):
            raise error

        return command

    cases = [
        (ValueError("inner_lr must be a positive number, got -0.1.\nSee the docs."), "train"),
        (FileNotFoundError("No Omniglot zip in /x; get it from https://github.com/brendenlake/omniglot"), "train"),
        (ValueError("shots + queries must be at most 20, got shots=19, queries=5."), "train"),
        (jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9.00GiB.\nBuffers: ..."), "train"),
        (ValueError("num_steps must be a non-negative integer, got -1."), "eval"),
        (ValueError("task_batching must be one of 'vmap', 'map'; got 'pmap'."), "train"),
    ]
    expected = [
        "metajax train: --inner-lr must be a positive number, got -0.1. See the docs.",
        "metajax train: No Omniglot zip in /x; get it from https://github.com/brendenlake/omniglot",
        "metajax train: --shots + --query must be at most 20, got --shots=19, --query=5.",
        "metajax train: the device ran out of memory (RESOURCE_EXHAUSTED: Out of memory allocating 9.00GiB.); "
        "lower --meta-batch, --eval-tasks or --steps-per-call.",
        "metajax eval: --eval-steps must be a non-negative integer, got -1.",
        "metajax train: --task-batching must be one of 'vmap', 'map'; got 'pmap'.",
    ]
    for (error, command), line in zip(cases, expected, strict=True):
        monkeypatch.setitem(cli.COMMANDS, command, raises(error))
        argv = [command, "run"] if command == "eval" else [command, *OUT]
        assert _fails(argv, capsys) == line
        with pytest.raises(type(error)):  # --debug: the exception itself, with its traceback
            cli.main(["--debug", *argv])
        with pytest.raises(type(error)):
            cli.main([*argv, "--debug"])
    monkeypatch.setitem(cli.COMMANDS, "train", raises(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):  # an unexpected error keeps its traceback
        cli.main(["train", *OUT])
    monkeypatch.setitem(cli.COMMANDS, "train", raises(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *OUT])
    assert info.value.code == 130 and capsys.readouterr().err == "metajax train: interrupted (Ctrl-C).\n"


def test_a_command_called_from_a_script_still_prints_its_refusal():
    args = cli.build_parser().parse_args(["train", "--seed", "-1", *OUT])
    with pytest.raises(SystemExit) as info:  # outside main(): the interpreter prints a str code, exit status 1
        cli.train_command(args)
    assert info.value.code == "--seed must be in [0, 2**32) (JAX uses 32 bits of it), got -1."


def test_flag_names_replace_only_argument_names():
    assert errors.with_flags("num_tasks must be >= 2; got num_tasks=1", "train") == (
        "--eval-tasks must be >= 2; got --eval-tasks=1"
    )
    assert errors.with_flags("the root folder /data/root must hold lr files", "continual") == (
        "the root folder /data/root must hold lr files"
    )


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--steps", "100000", "--steps-per-call", "1", "--log-every", "1", "--no-progress"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, "-m", "metajax.app.cli", *argv, "--out", str(out)], env=env,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text():
        assert child.poll() is None and time.monotonic() < deadline, "no log line appeared"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "metajax train: interrupted (Ctrl-C)."


# Runs `metajax ARGV`, with the second checkpoint's save slowed down and MARKER written as it starts.
_SLOW_SAVE = """
import sys, time
from pathlib import Path
import orbax.checkpoint as ocp
from metajax.app import cli

marker, original, calls = Path(sys.argv[1]), ocp.CompositeCheckpointHandler.finalize, []

def slow(self, directory):
    calls.append(directory)
    if len(calls) == 2:  # the second checkpoint, written to its temporary folder, not yet renamed
        marker.write_text(str(directory))
        time.sleep(3)
    return original(self, directory)

ocp.CompositeCheckpointHandler.finalize = slow
sys.exit(cli.main(sys.argv[2:]))
"""


def test_ctrl_c_during_a_checkpoint_save_leaves_it_complete_and_exits_130(tmp_path):
    from metajax.checkpoint import Checkpointer

    out, marker = tmp_path / "run", tmp_path / "saving"
    argv = ["train", "--steps", "100000", "--steps-per-call", "1", "--checkpoint-every", "2", "--no-progress"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(marker), *argv, "--out", str(out)], env=env,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not marker.is_file():
        assert child.poll() is None and time.monotonic() < deadline, "the second save never started"
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)  # while orbax writes checkpoint 4
    try:
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "metajax train: interrupted (Ctrl-C)."
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "4"]  # no half-written step
    checkpointer = Checkpointer(out / "checkpoints", every=2)
    assert checkpointer.steps() == [2, 4] and checkpointer.record(4)["algo"] == "maml"
    checkpointer.close()
