"""``metajax train --algo maml++`` and ``--bn-mode``: what the flags build, record and refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metajax.app import cli
from metajax.app.runs import settings

OUT = ["--out", "/nonexistent-metajax-run"]  # refused before anything is written


def _args(*flags: str):
    args = cli.parse(["train", *flags, *OUT])
    cli._fill_defaults(args)
    return args


def test_mamlpp_builds_lslr_msl_and_per_step_batch_norm_and_records_the_mode():
    args = _args("--algo", "maml++", "--task", "omniglot", "--inner-steps", "5", "--msl-epochs", "10")
    learner = cli.build_learner(args, ways=20)
    assert learner.learned_rates and learner.msl_epochs == 10 and learner.first_order_epochs == 0
    assert (learner.model.bn, learner.model.bn_steps) == ("per_step", 5)
    assert settings(args)["bn_mode"] == "per_step" and settings(args)["meta_lr_schedule"] == "cosine"
    plain = cli.build_learner(_args("--algo", "maml", "--task", "omniglot", "--bn-mode", "support"), ways=5)
    assert (plain.model.bn, plain.model.bn_steps, plain.learned_rates) == ("support", 1, False)
    running = _args("--algo", "fomaml", "--task", "omniglot", "--bn-mode", "running")
    assert cli.build_learner(running, ways=5).model.bn == "running" and settings(running)["bn_mode"] == "running"
    assert _args("--algo", "maml", "--task", "omniglot").bn_mode == "transductive"
    assert _args("--algo", "maml++").bn_mode is None  # sinusoid's MLP has no batch norm


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--task", "omniglot", "--algo", "protonet", "--bn-mode", "support"],
            "--bn-mode support needs a learner that gives the backbone its support set, inner step or running",
        ),
        (
            ["--task", "omniglot", "--algo", "imaml", "--bn-mode", "per_step"],
            "--bn-mode per_step needs the inner steps on the tape; --algo imaml differentiates",
        ),
        (["--bn-mode", "support"], "--bn-mode does not apply to --task sinusoid"),
        (["--msl-epochs", "3"], "--msl-epochs applies to --algo maml++ only, not --algo maml."),
        (["--algo", "maml++", "--msl-epochs", "-1"], "--msl-epochs must be a non-negative number of epochs"),
        (["--algo", "maml++", "--epoch-steps", "0"], "--epoch-steps must be a positive integer, got 0."),
        (["--min-meta-lr", "1e-4"], "--min-meta-lr 0.0001 is the end of the cosine schedule; pass --meta-lr-schedule"),
        (
            ["--meta-lr-schedule", "cosine", "--lr-decay-every", "100"],
            "--lr-decay-every halves the meta step size in stages; --meta-lr-schedule cosine anneals",
        ),
        (["--algo", "maml++", "--min-meta-lr", "0.1"], "--min-meta-lr must be in [0, --meta-lr 0.001]"),
    ],
)
def test_bad_mamlpp_and_bn_flags_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv, *OUT])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_running_bn_mode_is_recorded_checkpointed_and_evaluated(tmp_path, monkeypatch, data_root, omniglot_cache):
    monkeypatch.setenv("METAJAX_CACHE", str(omniglot_cache))
    out = tmp_path / "running"
    argv = ["train", "--algo", "fomaml", "--task", "omniglot", "--data-root", str(data_root), "--bn-mode", "running",
            "--ways", "2", "--shots", "1", "--query", "1", "--test-query", "2", "--filters", "2", "--meta-batch", "2",
            "--steps", "2", "--checkpoint-every", "1", "--eval-tasks", "4", "--eval-steps", "1", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["bn_mode"] == "running"
    state = cli.restore_run(out)[3]
    assert np.abs(state.model_state["batch_stats"]["BatchStatNorm_0"]["mean"]).max() > 0
    assert cli.main(["eval", str(out), "--eval-tasks", "4"]) == 0
    evaluated = json.loads((out / "eval.json").read_text())["eval"]["accuracy"]["mean"]
    np.testing.assert_allclose(evaluated, metrics["eval"]["accuracy"]["mean"], rtol=1e-6)
