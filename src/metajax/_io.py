"""Result files that survive a crash: atomic writes, strict JSON, JSON lines that tolerate a torn end.

A file written with :func:`write_atomic` is either the old one or the complete new one, even
after a power loss (the data and the rename are fsynced). JSON holds no ``NaN`` or
``Infinity`` (which ``json.loads`` of other languages refuses): non-finite floats become
``null`` and the object lists where they were under ``"nonfinite"``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then move it to ``path``.

    The temporary file has a unique name in ``path``'s folder; it is fsynced, renamed over
    ``path`` (``os.replace``) and the folder is fsynced. On any error the temporary file is
    removed and ``path`` keeps its old contents.
    """
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
        try:
            write(f)  # type: ignore[arg-type]  # a binary file object, as ``write`` expects
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            tmp.unlink()
            raise
    try:
        os.chmod(tmp, 0o644)  # NamedTemporaryFile creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def strict(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every non-finite float as ``None``, and the dotted paths where they were.

    NumPy scalars and arrays become Python numbers and lists.

    Example:
        >>> strict({"eval": {"mse": [1.0, float("nan")]}, "load": (0.5, 0.7)})
        ({'eval': {'mse': [1.0, None]}, 'load': [0.5, 0.7]}, ['eval.mse.1'])
    """
    found: list[str] = []

    def convert(value, path):
        if isinstance(value, dict):
            return {k: convert(v, path + (str(k),)) for k, v in value.items()}
        if isinstance(value, list | tuple | np.ndarray):
            items = value.tolist() if isinstance(value, np.ndarray) else list(value)
            if not isinstance(items, list):  # a 0-d array
                return convert(items, path)
            return [convert(v, path + (str(i),)) for i, v in enumerate(items)]
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(".".join(path))
            return None
        return value

    return convert(obj, ()), found


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON of ``obj`` (see :func:`strict`); a dict with non-finite floats gets ``"nonfinite": [paths]``."""
    converted, found = strict(obj)
    if found and isinstance(converted, dict):
        converted["nonfinite"] = found
    return json.dumps(converted, indent=indent, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (:func:`dumps`) to ``path`` with :func:`write_atomic`."""
    text = dumps(obj, indent=2) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def append_json_line(path: str | os.PathLike, obj: Any) -> None:
    """Append ``obj`` as one strict JSON line to ``path``, flushed and fsynced."""
    with open(path, "a") as f:
        f.write(dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json_lines(path: str | os.PathLike) -> list[Any]:
    """The objects of a JSON-lines file; a torn last line (a write cut short) is dropped with a warning.

    Raises:
        ValueError: a line before the last is not JSON (the file and line are named).
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as error:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path} line {number} is not JSON ({error}); the file is corrupt.") from error
            message = f"{path} line {number} is cut short (an interrupted write); it is dropped."
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return out
