"""scripts/icl_plateau.py trains each setting of the compared option on the same episodes and prints JSON lines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "icl_plateau.py"


def _script():
    spec = importlib.util.spec_from_file_location("icl_plateau", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snail_feature_norm_on_and_off(data_root, capsys):
    argv = ["--learner", "snail", "--compare", "feature_norm", "--steps", "2", "--log-every", "1",
            "--eval-tasks", "2", "--seeds", "0", "--data-root", str(data_root)]  # fmt: skip
    assert _script().main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["kind"] == "machine"
    results = lines[1:]
    assert [(r["learner"], r["feature_norm"], r["tied_keys"]) for r in results] == [
        ("snail", True, None),
        ("snail", False, None),
    ]
    assert all([c["step"] for c in r["train_curve"]] == [1, 2] and 0 <= r["test_accuracy"] <= 1 for r in results)


def test_snail_has_no_tied_keys_to_compare(capsys):
    with pytest.raises(SystemExit):
        _script().main(["--learner", "snail", "--compare", "tied_keys"])
    assert "--compare tied_keys: SNAIL has no such option" in capsys.readouterr().err
