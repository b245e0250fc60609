"""The README's Python blocks run as written (each block is self-contained, as a reader copies it)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
NEEDS_DATA = [b for b in BLOCKS if "tasks.benchmark(" in b]
# The equinox example needs the optional extra (in `.[test]`); without it that block is left out.
NEEDS_EQUINOX = [b for b in BLOCKS if "import equinox" in b and importlib.util.find_spec("equinox") is None]
NO_DATA = [b for b in BLOCKS if b not in NEEDS_DATA and b not in NEEDS_EQUINOX]


def _run(block: str) -> dict:
    namespace: dict = {}
    number = BLOCKS.index(block) + 1
    try:
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    except Exception as error:  # noqa: BLE001 - name the block that failed
        pytest.fail(f"README.md python block {number} failed: {type(error).__name__}: {error}\n{block}")
    return namespace


def test_the_readme_has_its_examples():
    assert len(NO_DATA) >= 3 and len(NEEDS_DATA) >= 1


def test_readme_blocks_without_data_run(capsys):
    spaces = [_run(block) for block in NO_DATA]
    printed = capsys.readouterr().out.splitlines()
    quickstart = spaces[0]
    mse_after_one_step = float(printed[0].split()[0])
    assert quickstart["result"]["num_tasks"] == 600
    assert 0.0 < mse_after_one_step < 1.5  # MAML after 5,000 meta-steps on K=5: about 0.5
    assert "imaml" in printed[1]
    assert any(int(ns["state"].step) == 200 for ns in spaces if "mesh" in ns)


def test_readme_dataset_blocks_run(data_root, monkeypatch):
    monkeypatch.setenv("METAJAX_DATA", str(data_root))  # the README's loaders read $METAJAX_DATA
    for block in NEEDS_DATA:
        namespace = _run(block)
    assert namespace["episodes"].support_x.shape == (32, 5, 28, 28, 1)
