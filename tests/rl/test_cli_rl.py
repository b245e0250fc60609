"""``metajax train --task nav2d``: metrics.json, eval, resume (MAML-RL, ProMP), the random baseline, refused flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metajax.app import cli

TINY = "--horizon 5 --episodes 3 --meta-batch 2 --log-every 2 --checkpoint-every 2 --eval-tasks 3 --no-progress"


def nav2d(out, algo: str, *more: str) -> list[str]:
    """``metajax train`` arguments of a tiny nav2d run of ``algo`` writing to ``out``."""
    return ["train", "--task", "nav2d", "--algo", algo, *TINY.split(), *more, "--out", str(out)]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A 4-step MAML-RL run's folder."""
    out = tmp_path_factory.mktemp("rl") / "maml-rl"
    assert cli.main(nav2d(out, "maml-rl", "--steps", "4")) == 0
    return out


def test_nav2d_run_writes_the_metrics_contract_and_eval_reproduces_it(four_steps):
    metrics = json.loads((four_steps / "metrics.json").read_text())
    assert metrics["config"]["algo"] == "maml-rl" and metrics["config"]["inner_lr"] == 0.1
    assert [e["step"] for e in metrics["train"]["curve"]] == [2, 4]
    assert metrics["train"]["env_steps_per_s"] > 0
    ret = metrics["eval"]["return"]
    assert metrics["eval"]["num_tasks"] == 3 and metrics["eval"]["num_steps"] == 3
    assert len(ret["mean"]) == len(ret["ci95"]) == 4 and all(m < 0 for m in ret["mean"])
    assert cli.main(["eval", str(four_steps), "--eval-tasks", "3"]) == 0
    evaluated = json.loads((four_steps / "eval.json").read_text())
    assert evaluated["checkpoint_step"] == 4
    np.testing.assert_allclose(evaluated["eval"]["return"]["mean"], ret["mean"], rtol=1e-5)


def test_resumed_run_ends_as_the_uninterrupted_one(four_steps, tmp_path):
    out = tmp_path / "run"
    # Evaluated before adaptation only (the return of the final meta-parameters on the same
    # tasks), which spares compiling the adapted evaluation twice more.
    assert cli.main(nav2d(out, "maml-rl", "--steps", "2", "--eval-steps", "0")) == 0
    assert cli.main(nav2d(out, "maml-rl", "--steps", "4", "--eval-steps", "0", "--resume", str(out))) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    straight = json.loads((four_steps / "metrics.json").read_text())
    assert [e["step"] for e in resumed["train"]["curve"]] == [2, 4]
    assert [e["loss"] for e in resumed["train"]["curve"]] == [e["loss"] for e in straight["train"]["curve"]]
    np.testing.assert_allclose(resumed["eval"]["return"]["mean"], straight["eval"]["return"]["mean"][:1], rtol=1e-5)


PROMP = ("--outer-steps", "2")


@pytest.fixture(scope="module")
def promp_four_steps(tmp_path_factory):
    """A 4-step ProMP run's folder (2 outer steps per sample, to keep it small)."""
    out = tmp_path_factory.mktemp("rl") / "promp"
    assert cli.main(nav2d(out, "promp", *PROMP, "--steps", "4")) == 0
    return out


def test_promp_run_writes_the_metrics_contract(promp_four_steps):
    metrics = json.loads((promp_four_steps / "metrics.json").read_text())
    assert metrics["config"]["outer_steps"] == 2 and metrics["config"]["clip_eps"] == 0.2
    curve = metrics["train"]["curve"]
    assert [e["step"] for e in curve] == [2, 4] and all(e["inner_kl_coeff"] > 0 for e in curve)
    assert all(e["loss"] == -e["return"] for e in curve)  # the trainer's loss is minus the post-adaptation return
    ret = metrics["eval"]["return"]
    assert len(ret["mean"]) == len(ret["ci95"]) == 4 and all(m < 0 for m in ret["mean"])


def test_resumed_promp_run_ends_as_the_uninterrupted_one(promp_four_steps, tmp_path):
    out = tmp_path / "run"
    assert cli.main(nav2d(out, "promp", *PROMP, "--steps", "2", "--eval-steps", "0")) == 0
    assert cli.main(nav2d(out, "promp", *PROMP, "--steps", "4", "--eval-steps", "0", "--resume", str(out))) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    straight = json.loads((promp_four_steps / "metrics.json").read_text())
    # The KL coefficients live with the parameters, so the checkpoint carries them to the resumed steps.
    for name in ("loss", "inner_kl_coeff"):
        assert [e[name] for e in resumed["train"]["curve"]] == [e[name] for e in straight["train"]["curve"]]
    np.testing.assert_allclose(resumed["eval"]["return"]["mean"], straight["eval"]["return"]["mean"][:1], rtol=1e-5)


def test_random_baseline_is_evaluated_at_its_initialisation(tmp_path):
    out = tmp_path / "random"
    assert cli.main(nav2d(out, "random")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 0 and metrics["train"]["curve"] == []
    assert len(metrics["eval"]["return"]["mean"]) == 4
    assert (out / "checkpoints").is_dir()  # so that metajax eval can read it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--algo", "maml-rl"],
            "--algo maml-rl needs an RL task (nav2d, cheetah-vel, cheetah-dir), not --task sinusoid",
        ),
        (["--task", "nav2d"], "--algo maml needs a supervised task, not --task nav2d; the RL learners are"),
        (["--episodes", "5"], "--episodes applies to the RL tasks (nav2d, cheetah-vel, cheetah-dir) only, not --task"),
        (
            ["--task", "nav2d", "--algo", "pretrained", "--estimator", "lvc"],
            "--estimator applies to --algo maml-rl only, not --algo pretrained.",
        ),
        (
            ["--task", "nav2d", "--algo", "random", "--steps", "5"],
            "--algo random is not meta-trained (0 meta-steps); drop --steps.",
        ),
        (["--task", "nav2d", "--algo", "maml-rl", "--horizon", "0"], "--horizon must be a positive integer, got 0."),
        (
            ["--task", "nav2d", "--algo", "maml-rl", "--outer-steps", "3"],
            "--outer-steps applies to --algo promp only, not --algo maml-rl.",
        ),
        (
            ["--task", "nav2d", "--algo", "maml-rl", "--clip-eps", "0.3"],
            "--clip-eps applies to --algo promp only, not --algo maml-rl.",
        ),
        (
            ["--task", "nav2d", "--algo", "promp", "--first-order"],
            "--first-order applies to --algo maml-rl only, not --algo promp.",
        ),
        (
            ["--task", "nav2d", "--algo", "promp", "--outer-steps", "0"],
            "--outer-steps must be a positive integer, got 0.",
        ),
        (
            ["--task", "nav2d", "--algo", "promp", "--clip-eps", "1.5"],
            "--clip-eps must be in (0, 1), PPO's clip range of the likelihood ratio; got 1.5.",
        ),
        (
            ["--task", "nav2d", "--algo", "promp", "--task-batching", "map"],
            "--task-batching map does not apply to --algo promp: it meta-updates on one device, its tasks vmapped.",
        ),
        (["--task", "nav2d", "--algo", "maml-rl", "--ways", "5"], "--ways does not apply to --task nav2d"),
        (["--task", "nav2d", "--algo", "maml-rl", "--test-query", "5"], "--test-query does not apply to --task nav2d"),
        (["--task", "nav2d", "--algo", "maml-rl", "--shots", "5"], "--shots does not apply to --task nav2d"),
    ],
)
def test_rl_flags_that_do_not_apply_are_refused(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["train", *argv, "--out", str(tmp_path)])
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_nav2d_script_collects_the_runs_and_prints_the_readme_table(four_steps, tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "rl_nav2d.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1] / "src")}
    run = lambda *args: (
        subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, check=True).stdout
    )
    collected = json.loads(run("collect", str(four_steps.parent), "--note", "tiny"))
    assert collected["note"] == "tiny" and list(collected["runs"]) == ["maml-rl"]
    train = collected["runs"]["maml-rl"]["train"]
    assert train["steps"] == 4 and train["env_steps_per_s_steady"] > 0  # 2 x 3 episodes x 5 steps per task
    (tmp_path / "nav2d.json").write_text(json.dumps(collected))
    lines = run("table", str(tmp_path / "nav2d.json")).splitlines()
    assert lines[0].startswith("| learner | meta-steps |") and lines[0].endswith("| after 3 steps |")
    mean = collected["runs"]["maml-rl"]["eval"]["return"]["mean"][0]
    assert lines[2].startswith("| MAML-RL (DiCE, second order) | 4 |") and f"{mean:.1f} +- " in lines[2]
    run("plot", str(tmp_path / "nav2d.json"), str(tmp_path / "return.png"))
    assert (tmp_path / "return.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nav2d_script_draws_a_runs_trajectories_before_and_after_adaptation(promp_four_steps, tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "rl_nav2d.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1] / "src")}
    args = ["trajectories", str(promp_four_steps), str(tmp_path / "t.json"), str(tmp_path / "t.png"), "--goals", "2"]
    subprocess.run([sys.executable, str(script), *args, "--steps", "1"], env=env, check=True, capture_output=True)
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["algo"] == "promp" and result["checkpoint_step"] == 4 and result["steps"] == [0, 1]
    paths = np.array(result["paths"])
    assert paths.shape == (2, 2, 5, 2)  # goals, adaptation steps, horizon, position
    np.testing.assert_array_equal(paths[:, :, 0], 0.0)  # every path starts at the origin
    assert np.abs(np.diff(paths, axis=2)).max() <= 0.1 + 1e-6  # actions clipped to 0.1
    assert np.array(result["returns"]).shape == (2, 2)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("results", ["nav2d-cpu.json", "nav2d-trpo-cpu.json", "cheetah-vel-cpu.json"])
def test_the_readme_table_is_the_committed_json_s(results):
    root = Path(__file__).resolve().parents[2]
    script = root / "scripts" / "rl_nav2d.py"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    table = subprocess.run(
        [sys.executable, str(script), "table", str(root / "docs" / "results" / results)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert table in (root / "README.md").read_text()
