"""Run folders: who owns one, the machine record, atomic JSON files, the JSON-lines log, resuming."""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from metajax._io import append_json_line, dumps, read_json_lines, write_atomic, write_json_atomic
from metajax.app import process
from metajax.app.errors import CommandError, flag
from metajax.checkpoint import Checkpointer, CheckpointMismatchError, differing_settings

__all__ = ["write_json_atomic", "read_json_lines"]  # re-exported from metajax._io for the commands

# What a run writes into its folder; --overwrite removes these and nothing else.
RUN_FILES = ("metrics.json", "log.jsonl", "eval.json", "checkpoints", "tensorboard", "wandb")
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
        **process.settings(),
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


# The optional loggers of metajax train: flag -> (the package it needs, the extra installing it).
LOGGERS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


def require_logger(name: str) -> Any:
    """The package of the logger ``name`` (:data:`LOGGERS`); refused, naming its extra, when it is missing."""
    module, extra = LOGGERS[name]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CommandError(f'{flag(name)} needs {module}: pip install "metajax[{extra}]".') from error


def require_loggers(args) -> None:
    """Refuse ``--tensorboard`` / ``--wandb`` when its package is missing (before the run folder is touched)."""
    for name in LOGGERS:
        if getattr(args, name):
            require_logger(name)


def scalar_writers(args, config: dict) -> list[ScalarWriter]:
    """The writers ``--wandb`` and ``--tensorboard`` ask for, into ``args.out`` (W&B first: it may fail)."""
    writers: list[ScalarWriter] = []
    if args.wandb:
        name = args.wandb_name or str(args.out)
        writers.append(WandB(args.out, config, args.wandb_project or "metajax", name, args.wandb_mode))
    if args.tensorboard:
        writers.append(TensorBoard(args.out / "tensorboard"))
    return writers


class ScalarWriter(Protocol):
    """Where the logged numbers also go (TensorBoard, Weights & Biases): ``{tag: value}`` at a meta-step."""

    def write(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """A :class:`ScalarWriter` of TensorBoard event files in ``folder`` (tensorboardX, the ``tensorboard`` extra)."""

    def __init__(self, folder: Path):
        self._writer = require_logger("tensorboard").SummaryWriter(str(folder))

    def write(self, scalars: dict[str, float], step: int) -> None:
        """Add each scalar at ``step`` and flush."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self._writer.close()


class WandB:
    """A :class:`ScalarWriter` of one Weights & Biases run (``wandb``, the ``wandb`` extra).

    Its files go to ``folder/wandb``; ``config`` (the run's settings) is the W&B run's config;
    ``mode`` is ``online``, ``offline`` or ``disabled`` (``None``: wandb's own, ``$WANDB_MODE``).
    """

    def __init__(self, folder: Path, config: dict, project: str, name: str, mode: str | None):
        wandb = require_logger("wandb")
        try:
            self._run = wandb.init(project=project, name=name, mode=mode, dir=str(folder), config=config)
        except wandb.errors.Error as error:  # not logged in, no network, a bad project: before the log is written
            raise CommandError(f"--wandb: wandb.init(project={project!r}, mode={mode!r}) failed: {error}") from error

    def write(self, scalars: dict[str, float], step: int) -> None:
        """Log the scalars as the W&B run's history at ``step``."""
        self._run.log(scalars, step=step)

    def close(self) -> None:
        """Finish the W&B run (an offline one is then complete on disk, for ``wandb sync``)."""
        self._run.finish()


class JsonLines:
    """``log.jsonl``: one strict JSON object per logged interval, starting from ``entries`` (a resumed run's).

    Every line is flushed and fsynced. Every entry's numbers (but its ``step``) are also
    written as ``train/<name>`` scalars at that step to each of ``writers``.
    """

    def __init__(self, path: Path, entries: list[dict], writers: Sequence[ScalarWriter] = ()):
        self.path = path
        self.writers = tuple(writers)
        text = "".join(dumps(e) + "\n" for e in entries)
        write_atomic(path, lambda f: f.write(text.encode()))

    def append(self, entry: dict) -> None:
        """Append ``entry`` as one line (and as scalars to the writers)."""
        append_json_line(self.path, entry)
        scalars = {f"train/{k}": v for k, v in entry.items() if k != "step" and isinstance(v, int | float)}
        for writer in self.writers:
            writer.write(scalars, entry["step"])

    def close(self) -> None:
        """Close the writers."""
        for writer in self.writers:
            writer.close()
