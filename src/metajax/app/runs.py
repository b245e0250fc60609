"""Run folders: the machine record, atomic JSON files, the JSON-lines log, resuming from checkpoints."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from metajax.checkpoint import Checkpointer, CheckpointMismatchError


def machine() -> dict:
    """The machine a figure was measured on: platform, processor, cores, JAX backend and device."""
    import jax

    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def resume_or_exit(
    directory: Path, like: Any, command: str, record: dict | None = None, ignore: tuple[str, ...] = ()
) -> tuple[Any, dict | None]:
    """:meth:`Checkpointer.resume` on ``directory``; a checkpoint that cannot be used exits with the reason.

    Returns ``(like, None)`` when ``directory`` holds no checkpoint; with ``record``, a
    checkpoint of another configuration (settings outside ``ignore``) is refused.
    """
    checkpointer = Checkpointer(directory, every=1)
    try:
        return checkpointer.resume(like, record, ignore)
    except (CheckpointMismatchError, RuntimeError) as error:
        raise SystemExit(f"{command}: cannot resume from {directory}: {error}") from error
    finally:
        checkpointer.close()


class JsonLines:
    """``log.jsonl``: one JSON object per logged interval, starting from ``entries`` (a resumed run's).

    With ``tensorboard`` (a folder), every entry's numbers are also TensorBoard scalars
    (through ``tensorboardX``, the ``tensorboard`` extra).
    """

    def __init__(self, path: Path, entries: list[dict], tensorboard: Path | None = None):
        self.path = path
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
        os.replace(tmp, path)
        self.writer = None
        if tensorboard is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as error:
                raise SystemExit(
                    'metajax train: --tensorboard needs tensorboardX: pip install "metajax[tensorboard]".'
                ) from error
            self.writer = SummaryWriter(str(tensorboard))

    def append(self, entry: dict) -> None:
        """Append ``entry`` as one line (and as TensorBoard scalars)."""
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for name, value in entry.items():
                if name != "step":
                    self.writer.add_scalar(f"train/{name}", value, entry["step"])
            self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer, if any."""
        if self.writer is not None:
            self.writer.close()
