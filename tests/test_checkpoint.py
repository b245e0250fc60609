"""Checkpoints: exact resume after SIGKILL, mismatched and corrupt checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import metajax
from metajax import models, tasks
from metajax.app import cli
from metajax.checkpoint import Checkpointer, CheckpointMismatchError

RUN = [
    "train",
    "--algo",
    "maml",
    "--shots",
    "5",
    "--meta-batch",
    "5",
    "--steps",
    "2000",
    "--steps-per-call",
    "50",
    "--checkpoint-every",
    "100",
    "--log-every",
    "100",
    "--eval-tasks",
    "2",
    "--eval-steps",
    "1",
    "--no-progress",
]


def _state(hidden=8, step=0):
    learner = metajax.MAML(models.MLP(hidden=(hidden,), out=1), inner_lr=0.01)
    state = metajax.init_state(learner, tasks.Sinusoid(shots=5), optax.adam(1e-3), jax.random.key(0))
    return state.replace(step=state.step + step)


def _final_params(run_dir: Path, steps: int):
    args = cli.build_parser().parse_args([*RUN, "--out", str(run_dir)])
    task, _ = cli.build_tasks(args)
    like = metajax.init_state(cli.build_learner(args), task, optax.adam(1e-3), jax.random.key(0))
    checkpointer = Checkpointer(run_dir / "checkpoints", every=1)
    assert checkpointer.latest_step() == steps
    state, record = checkpointer.restore(like)
    assert record["algo"] == "maml"
    return state


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert cli.main([*RUN, "--out", str(reference)]) == 0
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, "-m", "metajax.app.cli", *RUN, "--out", str(killed)], env=env)
    deadline = time.monotonic() + 300
    while not any(p.name.isdigit() for p in (killed / "checkpoints").glob("*")) and child.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    last = Checkpointer(killed / "checkpoints", every=1).latest_step()
    assert last is not None and last < 2000 and last % 100 == 0, last
    assert cli.main([*RUN, "--out", str(killed), "--resume", str(killed)]) == 0
    a, b = _final_params(reference, 2000), _final_params(killed, 2000)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
    log = (killed / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(100, 2001, 100))


def test_mismatched_checkpoint_is_named(tmp_path):
    checkpointer = Checkpointer(tmp_path, every=1)
    checkpointer.save(_state(hidden=8, step=3))
    with pytest.raises(CheckpointMismatchError, match=r"params/Dense_0/bias has shape \(8,\), expected \(9,\)"):
        checkpointer.restore(_state(hidden=9))


def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    checkpointer = Checkpointer(tmp_path, every=1)
    checkpointer.save(_state(step=1))
    checkpointer.save(_state(step=2))
    for path in (tmp_path / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="could not be read"):
        state, _ = Checkpointer(tmp_path, every=1).restore(_state())
    assert int(state.step) == 1
    assert (tmp_path / "2").is_dir()


def test_resume_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="holds no checkpoints/ folder"):
        cli.main([*RUN, "--out", str(tmp_path / "new"), "--resume", str(tmp_path)])
