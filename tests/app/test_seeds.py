"""``metajax train --seeds``: one run per seed, aggregated across seeds with a Student-t interval."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import free_port
from metajax.app import cli
from metajax.evaluation import seed_interval, t_quantile

TINY = "train --shots 2 --meta-batch 2 --steps 2 --steps-per-call 1 --checkpoint-every 1 --eval-tasks 3"
TINY_EVAL = "--eval-steps 1 --no-progress"


def train(out, *extra: str) -> int:
    return cli.main([*TINY.split(), *TINY_EVAL.split(), *extra, "--out", str(out)])


def test_t_quantiles_are_the_tables():
    # Two-sided 95 % critical values of Student's t (any statistics table), and the normal limit.
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4), df
    assert t_quantile(0.995, 3) == pytest.approx(5.841, abs=5e-4)
    assert t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(0.3, 2)


def test_seed_interval_is_mean_std_and_t_half_width():
    values = np.array([[0.90, 0.5], [0.94, 0.7], [0.92, 0.9]])
    got = seed_interval(values)
    std = [math.sqrt(((values[:, j] - values[:, j].mean()) ** 2).sum() / 2) for j in range(2)]
    np.testing.assert_allclose(got["mean"], [0.92, 0.7])
    np.testing.assert_allclose(got["std"], std)
    np.testing.assert_allclose(got["ci95"], [4.303 * s / math.sqrt(3) for s in std], rtol=1e-4)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.9])


def test_seeds_run_each_seed_and_aggregate_their_evaluations(tmp_path):
    out = tmp_path / "seeds"
    # Through the multi-host path (one process, joined over 127.0.0.1): it joins once, before any seed.
    host = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "1", "--process-id", "0"]
    command = [*TINY.split(), *TINY_EVAL.split(), "--seeds", "0,3", "--out", str(out), *host]
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "metajax.app.cli", *command], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert train(tmp_path / "plain", "--seed", "3") == 0
    result = json.loads((out / "metrics.json").read_text())
    runs = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 3)]
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    losses = [[e["loss"] for e in r["train"]["curve"]] for r in (runs[1], plain)]
    assert losses[0] == losses[1]  # a seed's run is the run of that --seed
    per_seed = np.array([r["eval"]["mse"]["mean"] for r in runs])
    np.testing.assert_allclose(result["eval"]["mse"]["mean"], per_seed.mean(0))
    np.testing.assert_allclose(
        result["eval"]["mse"]["ci95"], 12.706 * per_seed.std(0, ddof=1) / math.sqrt(2), rtol=1e-4
    )
    assert result["eval"]["num_seeds"] == 2 and result["config"]["seeds"] == [0, 3]
    assert result["eval"]["mse"]["per_seed"]["3"] == plain["eval"]["mse"]["mean"]
    # --resume continues every seed from its checkpoint, and starts again one stopped before its first.
    shutil.rmtree(out / "seed-3" / "checkpoints")
    (out / "seed-3" / "checkpoints").mkdir()
    assert train(out, "--seeds", "0,3", "--steps", "3", "--resume", str(out)) == 0
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == {"0": 3, "3": 3}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "4"], "expected at least two distinct seeds in [0, 2**32), got '4'"),
        (["--seeds", "1,1"], "expected at least two distinct seeds"),
        (["--seeds", "0,x"], "expected comma-separated integers such as 0,1,2, got '0,x'"),
        (["--seeds", "0,1", "--seed", "2"], "--seed 2 and --seeds both set the seed; pass one of them."),
        (["--seeds", "0,1", "--steps", "0"], "--steps must be"),  # checked before OUT is made
    ],
)
def test_bad_seeds_are_refused(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        train(tmp_path / "run", *extra)
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_only_the_primary_process_writes_the_aggregate(tmp_path, monkeypatch):
    # In a multi-host run every process trains each seed; process 0 alone owns OUT (claim, metrics.json).
    from metajax.app import launch, seeds

    def one_seed(args):  # stands in for the training command: a fixed evaluation per seed
        return {"train": {"steps": 2}, "eval": {"mse": {"mean": [float(args.seed)]}, "num_tasks": 3, "num_steps": 0}}

    args = cli.parse([*TINY.split(), "--seeds", "1,3", "--out", str(tmp_path / "run")])
    monkeypatch.setattr(launch, "is_primary", lambda _: False)
    assert seeds.run(args, one_seed, cli._check_args)["eval"]["mse"]["mean"] == [2.0]
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(launch, "is_primary", lambda _: True)
    seeds.run(args, one_seed, cli._check_args)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["eval"]["mse"]["per_seed"] == {"1": [1.0], "3": [3.0]}
