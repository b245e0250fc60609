"""docs/errors.md names, for every bad input, a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_error_row_names_an_existing_test():
    rows = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert len(rows) >= 30
    missing = []
    for row in rows:
        cell = row.rstrip(" |").split(" | ")[-1]
        assert cell == "same" or cell.startswith("`"), row
        for ref in re.findall(r"`([^`]+)`", cell):
            path, _, name = ref.partition("::")
            file = ROOT / "tests" / path
            if not file.is_file() or (name and f"def {name}(" not in file.read_text()):
                missing.append(ref)
    assert not missing, f"docs/errors.md names tests that do not exist: {missing}"
