"""Run folders: who owns one, the machine record, atomic JSON files, the JSON-lines log, resuming."""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from metajax._io import append_json_line, dumps, read_json_lines, write_atomic, write_json_atomic
from metajax.app.errors import CommandError, flag
from metajax.checkpoint import Checkpointer, CheckpointMismatchError, differing_settings

__all__ = ["write_json_atomic", "read_json_lines"]  # re-exported from metajax._io for the commands

# What a run writes into its folder; --overwrite removes these and nothing else.
RUN_FILES = ("metrics.json", "log.jsonl", "eval.json", "checkpoints", "tensorboard")
RUN_FIGURES = ("training_curve.png", "adaptation.png", "adaptation_eval.png", "R_*.png")
_MARKERS = ("metrics.json", "log.jsonl", "checkpoints")  # a folder holding one of these holds a run


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
        "process_count": jax.process_count(),
        "jax": jax.__version__,
    }


def settings(args) -> dict:
    """A command's arguments as the JSON record of its run (paths as strings; ``--debug`` left out)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "debug"}


def check_out(out: Path, resume: Path | None, overwrite: bool) -> None:
    """Refuse an ``--out`` this run cannot own; touches nothing.

    Refused: a file, a folder that cannot be written, a folder holding another run (unless
    it is the ``--resume`` folder or ``--overwrite`` is given), ``--overwrite`` of the
    folder ``--resume`` reads.
    """
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = f"--out {out}" if existing == out else f"--out {out}: {existing}"
        raise CommandError(f"{where} exists as a file; pass a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: {existing} is not writable.")
    same = resume is not None and resume.absolute().resolve() == out.absolute().resolve()
    if same and overwrite:
        raise CommandError(f"--overwrite would delete the run --resume {resume} continues; pass one of them.")
    held = [name for name in _MARKERS if (out / name).exists()]
    if held and not same and not overwrite:
        raise CommandError(
            f"--out {out} already holds a run ({', '.join(held)}); pass --resume {out} to continue it, "
            "--overwrite to replace it, or another --out."
        )


def claim(out: Path, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, remove the files an earlier run wrote there (:data:`RUN_FILES`, figures)."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in [out / name for name in RUN_FILES] + [p for g in RUN_FIGURES for p in out.glob(g)]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


def refuse_other_settings(run_dir: Path, earlier: dict, now: dict, allowed: tuple[str, ...]) -> dict:
    """``{setting: (earlier, now)}`` of the settings that changed since the run ``run_dir``; refused unless ``allowed``.

    ``--resume``, ``--step`` and ``--overwrite`` are not settings and are left out.
    """
    differ = differing_settings(earlier, json.loads(json.dumps(now)), ignore=("resume", "step", "overwrite"))
    refused = {k: v for k, v in differ.items() if k not in allowed}
    if refused:
        raise CommandError(
            f"--resume {run_dir} ran with other settings (setting: (earlier, now) = {refused}); "
            f"only {', '.join(map(flag, allowed))} may change."
        )
    return differ


def require_tensorboard() -> None:
    """Refuse ``--tensorboard`` when tensorboardX is missing (before the run folder is touched)."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError as error:
        raise CommandError('--tensorboard needs tensorboardX: pip install "metajax[tensorboard]".') from error


def resume_or_exit(
    directory: Path,
    like: Any,
    what: str,
    record: dict | None = None,
    ignore: tuple[str, ...] = (),
    step: int | None = None,
) -> tuple[Any, dict | None]:
    """:meth:`Checkpointer.resume` on ``directory``; a checkpoint that cannot be used is refused with the reason.

    Returns ``(like, None)`` when ``directory`` holds no checkpoint; with ``record``, a
    checkpoint of another configuration (settings outside ``ignore``) is refused; with
    ``step``, that checkpoint rather than the newest readable one. ``what`` starts the
    message (``"OML's meta-training"``), if given.
    """
    checkpointer = Checkpointer(directory, every=1)
    try:
        return checkpointer.resume(like, record, ignore, step=step)
    except (CheckpointMismatchError, RuntimeError, FileNotFoundError) as error:
        raise CommandError(f"{what + ': ' if what else ''}cannot resume from {directory}: {error}") from error
    finally:
        checkpointer.close()


class JsonLines:
    """``log.jsonl``: one strict JSON object per logged interval, starting from ``entries`` (a resumed run's).

    Every line is flushed and fsynced. With ``tensorboard`` (a folder), every entry's
    numbers are also TensorBoard scalars (through ``tensorboardX``, the ``tensorboard`` extra).
    """

    def __init__(self, path: Path, entries: list[dict], tensorboard: Path | None = None):
        self.path = path
        self.writer = None
        if tensorboard is not None:
            require_tensorboard()
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard))
        text = "".join(dumps(e) + "\n" for e in entries)
        write_atomic(path, lambda f: f.write(text.encode()))

    def append(self, entry: dict) -> None:
        """Append ``entry`` as one line (and as TensorBoard scalars)."""
        append_json_line(self.path, entry)
        if self.writer is not None:
            for name, value in entry.items():
                if name != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(f"train/{name}", value, entry["step"])
            self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer, if any."""
        if self.writer is not None:
            self.writer.close()
