"""Checkpoints: exact resume after SIGKILL, mismatched, corrupt and half-written checkpoints, choosing a step."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import metajax
from metajax import models, tasks
from metajax.app import cli
from metajax.checkpoint import Checkpointer, CheckpointMismatchError, CorruptCheckpointError

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step being written

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


def test_a_checkpoint_written_before_the_model_state_field_restores(tmp_path):
    from flax import struct

    class OldState(struct.PyTreeNode):  # TrainState as it was, without model_state
        step: jax.Array
        params: dict
        opt_state: tuple
        key: jax.Array

    state = _state(step=4)
    checkpointer = Checkpointer(tmp_path, every=1)
    checkpointer.save(OldState(state.step, state.params, state.opt_state, state.key))
    restored, _ = checkpointer.restore(_state())
    assert int(restored.step) == 4 and restored.model_state == {}
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)


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


def _corrupt(step_dir: Path) -> None:
    """Overwrite every file of a checkpoint's state with garbage."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")


def test_resumed_run_replaces_the_corrupt_checkpoint_it_went_past(tmp_path):
    learner, task, opt = (
        metajax.MAML(models.MLP(hidden=(8,), out=1), inner_lr=0.01),
        tasks.Sinusoid(shots=5),
        optax.adam(1e-3),
    )
    common = dict(key=jax.random.key(2), meta_batch=2, steps_per_call=2, log_every=2, progress=False)
    metajax.train(learner, task, opt, num_steps=4, checkpointer=Checkpointer(tmp_path, every=2), **common)
    _corrupt(tmp_path / "4")
    like = metajax.init_state(learner, task, opt, jax.random.key(0))
    with pytest.warns(RuntimeWarning, match="could not be read"):
        state, _ = Checkpointer(tmp_path, every=2).restore(like)
    assert int(state.step) == 2
    metajax.train(learner, task, opt, num_steps=4, state=state, checkpointer=Checkpointer(tmp_path, every=2), **common)
    reference, _ = metajax.train(learner, task, opt, num_steps=4, **common)  # no checkpoints at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # step 4 now reads back
        restored, _ = Checkpointer(tmp_path, every=2).restore(like)
    assert int(restored.step) == 4
    jax.tree.map(np.testing.assert_array_equal, restored.params, reference.params)


def test_corrupt_record_falls_back_to_the_older_checkpoint(tmp_path):
    checkpointer = Checkpointer(tmp_path, every=1)
    checkpointer.save(_state(step=1), record={"lr": 0.1})
    checkpointer.save(_state(step=2), record={"lr": 0.1})
    (tmp_path / "2" / "record" / "metadata").write_text('{"lr": 0.')  # a torn write
    with pytest.warns(RuntimeWarning, match=r"could not be read \(its record: JSONDecodeError"):
        state, record = Checkpointer(tmp_path, every=1).restore(_state())
    assert int(state.step) == 1 and record == {"lr": 0.1}
    with pytest.warns(RuntimeWarning, match="its record"):
        state, _ = Checkpointer(tmp_path, every=1).resume(_state(), record={"lr": 0.1})
    assert int(state.step) == 1
    with pytest.raises(CorruptCheckpointError, match="The record of checkpoint .*2 could not be read"):
        checkpointer.record(2)


def test_every_checkpoint_corrupt_is_one_short_error(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path, every=1)
    checkpointer.save(_state(step=1))
    checkpointer.save(_state(step=2))
    _corrupt(tmp_path / "1")
    tensorstore_like = "DATA_LOSS: Error decoding manifest [tensorstore_spec='" + "x" * 46_000 + "']\nmore detail"
    real_restore = Checkpointer._restore

    def restore(self, like, step):
        if step == 2:  # as TensorStore reports a corrupt array file: its whole spec on the first line
            raise ValueError(tensorstore_like)
        return real_restore(self, like, step)

    monkeypatch.setattr(Checkpointer, "_restore", restore)
    with pytest.warns(RuntimeWarning, match="2 could not be read"), pytest.raises(CorruptCheckpointError) as caught:
        Checkpointer(tmp_path, every=1).restore(_state())
    message = str(caught.value)
    assert message.startswith(f"None of the 2 checkpoints in {tmp_path} could be read (step 2: ValueError: DATA_LOSS")
    assert "step 1: " in message and "tensorstore_spec" not in message and len(message) < 1000, message


def test_a_checkpoint_is_chosen_by_step(tmp_path):
    checkpointer = Checkpointer(tmp_path, every=1, keep=5)
    for step in (1, 2, 3):
        checkpointer.save(_state(step=step), record={"step": step})
    state, record = checkpointer.restore(_state(), step=2)
    assert int(state.step) == 2 and record == {"step": 2}
    state, record = checkpointer.resume(_state(), step=1)
    assert int(state.step) == 1 and record == {"step": 1}
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at step=7 in .*; the steps there are \[1, 2, 3\]"):
        checkpointer.restore(_state(), step=7)
    _corrupt(tmp_path / "2")
    with pytest.raises(CorruptCheckpointError, match=r"The checkpoint chosen with step=2 \(.*2\) could not be read"):
        checkpointer.restore(_state(), step=2)  # a chosen step does not fall back


def test_interrupted_save_is_never_the_newest_checkpoint(tmp_path):
    checkpointer = Checkpointer(tmp_path, every=1)
    checkpointer.save(_state(step=1))
    checkpointer.save(_state(step=2))
    # What orbax leaves when a save is interrupted (KeyboardInterrupt) before its final rename:
    # the complete-looking folder under its temporary name (checked with orbax-checkpoint 0.12).
    shutil.copytree(tmp_path / "2", tmp_path / f"3{TMP_SUFFIX}")
    shutil.copytree(tmp_path / "2", tmp_path / f"5{TMP_SUFFIX}")
    reader = Checkpointer(tmp_path, every=1)
    assert reader.steps() == [1, 2]
    assert int(reader.restore(_state())[0].step) == 2
    reader.save(_state(step=3))
    assert reader.steps() == [1, 2, 3] and sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3"]
