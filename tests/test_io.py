"""Result files: atomic writes keep the old file on failure, strict JSON, JSON lines with a torn end."""

import json

import numpy as np
import pytest

from metajax import _io


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    _io.write_json_atomic(path, {"a": 1})

    def fail(f):
        f.write(b"{half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.write_atomic(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(TypeError):  # not JSON: nothing is written either
        _io.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_non_finite_floats_become_null_and_are_listed(tmp_path):
    path = tmp_path / "metrics.json"
    obj = {"eval": {"mse": {"mean": np.array([1.0, np.nan, np.inf])}}, "loss": np.float32(-np.inf), "n": np.int64(3)}
    obj["load"] = (0.5, float("nan"))  # a tuple, e.g. os.getloadavg()
    _io.write_json_atomic(path, obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert back["eval"]["mse"]["mean"] == [1.0, None, None] and back["loss"] is None and back["n"] == 3
    assert back["load"] == [0.5, None]
    assert back["nonfinite"] == ["eval.mse.mean.1", "eval.mse.mean.2", "loss", "load.1"]
    _io.write_json_atomic(path, {"ok": 1.5})
    assert "nonfinite" not in json.loads(path.read_text())


def test_json_lines_drop_a_torn_last_line_and_refuse_a_torn_middle_one(tmp_path):
    path = tmp_path / "log.jsonl"
    for step in (1, 2):
        _io.append_json_line(path, {"step": step, "loss": float("nan") if step == 2 else 0.5})
    assert _io.read_json_lines(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None, "nonfinite": ["loss"]}]
    with path.open("a") as f:
        f.write('{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match=r"log.jsonl line 3 is cut short \(an interrupted write\)"):
        assert [e["step"] for e in _io.read_json_lines(path)] == [1, 2]
    with path.open("a") as f:
        f.write('\n{"step": 4}\n')
    with pytest.raises(ValueError, match="log.jsonl line 3 is not JSON"):
        _io.read_json_lines(path)
