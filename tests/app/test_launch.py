"""``metajax train`` on several devices and several processes: the same run as on one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import free_port
from metajax.app import cli, launch
from metajax.checkpoint import Checkpointer

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
RUN = (
    "train --shots 5 --meta-batch 8 --steps-per-call 2 --log-every 2 --checkpoint-every 2 --eval-tasks 4 --no-progress"
)


def _processes(out, steps, *extra):
    """Two ``metajax train`` processes with two CPU devices each, joined over 127.0.0.1."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "metajax.app.cli", *RUN.split(), "--steps", str(steps), "--out", str(out)]
    procs = [
        subprocess.Popen(
            [*command, *extra, "--coordinator", address, "--num-processes", "2", "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [o for o, _ in outputs]


def test_two_processes_train_and_resume_as_one_device(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main([*RUN.split(), "--steps", "4", "--out", str(one)]) == 0
    first, second = _processes(two, 4)
    assert "wrote" in first and "wrote" not in second  # process 0 alone reports and writes
    _same_run(one, two)
    # Resumed across processes, the run continues as the one-device run does.
    assert cli.main([*RUN.split(), "--steps", "6", "--out", str(one), "--resume", str(one)]) == 0
    _processes(two, 6, "--resume", str(two))
    assert Checkpointer(two / "checkpoints", every=1).steps() == [2, 4, 6]
    _same_run(one, two)


def _same_run(one, two):
    """Runs ``one`` (one device) and ``two`` (two processes) logged the same losses and evaluated alike."""
    expected, found = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert found["machine"]["process_count"] == 2 and found["machine"]["device_count"] == 4
    assert [e["step"] for e in found["train"]["curve"]] == [e["step"] for e in expected["train"]["curve"]]
    np.testing.assert_allclose(
        [e["loss"] for e in found["train"]["curve"]], [e["loss"] for e in expected["train"]["curve"]], rtol=1e-5
    )
    # Ten inner steps from the final meta-parameters on the same new tasks: equal parameters, equal errors.
    np.testing.assert_allclose(found["eval"]["mse"]["mean"], expected["eval"]["mse"]["mean"], rtol=1e-4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-processes", "2"], "--num-processes needs --coordinator HOST:PORT"),
        (["--coordinator", "node0"], "--coordinator must be HOST:PORT or 'auto', got 'node0'"),
        (["--coordinator", "node0:1234", "--num-processes", "2"], "needs --num-processes and --process-id too"),
        (["--coordinator", "auto", "--process-id", "1"], "--process-id is found by --coordinator auto"),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id must be in [0, 2), got 2",
        ),
        (["--devices", "3"], "--meta-batch 8 must be a multiple of the 3 --devices"),
        (["--devices", str(8 * jax.device_count())], f"only {jax.device_count()} cpu devices are visible"),
        (["--mesh", "--devices", "2"], "--mesh is --devices all; pass one of them, got --mesh and --devices 2."),
    ],
)
def test_bad_launch_flags_are_refused(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        cli.main([*RUN.split(), "--steps", "2", "--out", str(tmp_path / "run"), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_devices_must_be_a_count_or_all(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--out", "x", "--devices", "0"])
    assert "expected a positive integer or 'all', got 0" in capsys.readouterr().err


def test_mesh_splits_the_tasks_over_every_device():
    args = cli.build_parser().parse_args([*RUN.split(), "--mesh", "--out", "x"])
    mesh = launch.mesh(args)  # None on one device: the plain step
    assert (mesh is None and jax.device_count() == 1) or mesh.devices.size == jax.device_count()
    assert launch.mesh(cli.build_parser().parse_args([*RUN.split(), "--out", "x"])) is None
