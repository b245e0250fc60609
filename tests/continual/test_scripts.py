"""The OML scripts run end to end on tiny budgets and print the JSON their docstrings promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _run(script: str, *args: str, ok: bool = True) -> dict | str:
    """The script's JSON output; with ``ok=False``, assert that it fails and return its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    if not ok:
        assert out.returncode != 0, out.stdout[-3000:]
        return out.stderr
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_continual_sine_script_reports_per_function_mse():
    result = _run("continual_sine.py", "--steps", "20", "--width", "8", "--runs", "2", "--shots", "2")
    for name in ("oml", "pretrained"):
        assert len(result[name]["mse_per_function"]) == 10
        assert result[name]["lr"] in (0.03, 0.01, 0.003, 0.001, 0.0003)
    assert result["train_oml"]["curve"][-1]["step"] == 20


def test_continual_sine_script_resumes_training_to_the_same_results(tmp_path):
    args = ("--steps", "20", "--width", "8", "--runs", "2", "--shots", "2", "--checkpoints", str(tmp_path))
    whole = _run("continual_sine.py", *args)
    for name in ("oml", "pretrained"):  # as if killed after step 16: the two newer checkpoints are lost
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["16", "18", "20"]
        shutil.rmtree(tmp_path / name / "18")
        shutil.rmtree(tmp_path / name / "20")
    resumed = _run("continual_sine.py", *args)
    for name in ("oml", "pretrained"):
        assert resumed[f"train_{name}"]["resumed_from"] == 16
        assert resumed[name] == whole[name]
    error = _run("continual_sine.py", *args[:2], "--width", "16", *args[4:], ok=False)
    assert "another configuration" in error and "'width': (8, 16)" in error


def test_oml_omniglot_script_reports_both_protocols_for_both_networks(data_root):
    result = _run(
        "continual_oml_omniglot.py",
        *("--steps", "10", "--filters", "4", "--runs", "2", "--classes", "3", "--data-root", str(data_root)),
    )
    row = result["classes_3"]
    assert set(row) == {f"{n}/{p}" for n in ("oml", "pretrained") for p in ("reinit-adam", "zero-sgd")}
    for entry in row.values():
        assert 0.0 <= entry["test_accuracy"] <= 1.0 and str(entry["lr"]) in entry["test_by_lr"]
