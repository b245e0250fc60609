"""Atomic, resumable checkpoints of a run's :class:`~metajax.training.TrainState` (orbax).

A checkpoint holds everything the next meta-step depends on (meta-parameters, optimizer
state, PRNG key, step) plus a small JSON record (the run's config). orbax writes each
checkpoint to a temporary folder and renames it when complete, so a run killed at any
moment leaves the previous checkpoints intact; the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from metajax._checks import check_positive_int


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit what is restored: other array shapes or structure, or another configuration."""


class Checkpointer:
    """Saves a run's state every ``every`` meta-steps into ``directory/<step>``.

    Args:
        directory: folder of the checkpoints (created if missing).
        every: meta-steps between checkpoints; :meth:`maybe_save` saves when a multiple of
            ``every`` was crossed.
        keep: how many of the newest checkpoints to keep (at least 2, so a corrupt newest
            one always leaves an older good one).

    Example:
        >>> ckpt = Checkpointer("runs/x/checkpoints", every=1000)       # doctest: +SKIP
        >>> ckpt.save(state, record={"algo": "maml"}); ckpt.wait()      # doctest: +SKIP
        >>> state, record = ckpt.restore(like=state)                     # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, every: int, keep: int = 3):
        check_positive_int("every", every)
        if not (isinstance(keep, int) and keep >= 2):
            raise ValueError(f"keep must be an integer of at least 2, got {keep!r}.")
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        handlers = {"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._last_saved = self.latest_step()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    def maybe_save(self, state: Any, record: dict | None = None) -> bool:
        """Save when ``state.step`` crossed a multiple of ``every`` since the last save."""
        step = int(state.step)
        last = 0 if self._last_saved is None else self._last_saved
        if step // self.every > last // self.every and step != last:
            self.save(state, record)
            return True
        return False

    def save(self, state: Any, record: dict | None = None) -> None:
        """Write ``state`` (any pytree with an integer ``step``) and a JSON ``record`` now."""
        step = int(state.step)
        if step == self._last_saved:
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record or {}))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        self._last_saved = step

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state at ``step`` (default: the newest that reads back), shaped like ``like``, and its record.

        A newest checkpoint that cannot be read (a truncated or corrupt file) is reported
        with a warning and the next older one is used; the corrupt one is left on disk.

        Raises:
            FileNotFoundError: no checkpoint in ``directory``.
            CheckpointMismatchError: the checkpoint's arrays do not fit ``like`` (another model).
        """
        candidates = [step] if step is not None else self.steps()[::-1]
        if not candidates:
            raise FileNotFoundError(f"No checkpoint in {self.directory} to resume from.")
        errors = []
        for s in candidates:
            try:
                state, record = self._restore(like, s)
            except CheckpointMismatchError:
                raise
            except Exception as error:  # noqa: BLE001 - any read failure means try the older one
                errors.append(f"step {s}: {type(error).__name__}: {error}")
                if step is None:
                    warnings.warn(
                        f"Checkpoint {self.directory / str(s)} could not be read ({error}); trying an older one.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue
            return state, record
        raise RuntimeError(f"No checkpoint in {self.directory} could be read:\n" + "\n".join(errors))

    def resume(self, like: Any, record: dict | None = None, ignore: tuple[str, ...] = ()) -> tuple[Any, dict | None]:
        """The newest readable checkpoint and its record, or ``(like, None)`` when there is none.

        With ``record`` (the configuration of the run about to continue), a checkpoint saved
        with another configuration is refused: every setting outside ``ignore`` must be equal.

        Raises:
            CheckpointMismatchError: the checkpoint's record or arrays differ from ``record`` / ``like``.
            RuntimeError: no checkpoint could be read.
        """
        latest = self.latest_step()
        if latest is None:
            return like, None
        if record is not None:
            differ = differing_settings(self.record(latest), json.loads(json.dumps(record)), ignore)
            if differ:
                raise CheckpointMismatchError(
                    f"{self.directory} holds checkpoints of another configuration "
                    f"(setting: (checkpoint's, now) = {differ})."
                )
        return self.restore(like)

    def _restore(self, like: Any, step: int) -> tuple[Any, dict]:
        expected = jax.tree_util.tree_flatten_with_path(like)[0]
        metadata = self._manager.item_metadata(step)["state"]
        found = jax.tree_util.tree_flatten_with_path(metadata)[0]
        _check_same_arrays(expected, found, self.directory / str(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore())
        )
        return restored["state"], dict(restored["record"] or {})

    def record(self, step: int) -> dict:
        """The JSON record saved with the checkpoint at ``step`` (the run's config)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        return dict(restored["record"] or {})

    def wait(self) -> None:
        """Block until pending writes are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self._manager.close()


def differing_settings(earlier: dict, now: dict, ignore: tuple[str, ...] = ()) -> dict:
    """``{setting: (earlier value, value now)}`` for every setting, less ``ignore``, whose values differ.

    For refusing to resume a run (its checkpoint's or ``metrics.json``'s record) under
    another configuration.

    Example:
        >>> differing_settings({"lr": 0.1, "seed": 0}, {"lr": 0.3, "seed": 0})
        {'lr': (0.1, 0.3)}
    """
    keys = sorted((earlier.keys() | now.keys()) - set(ignore))
    return {k: (earlier.get(k), now.get(k)) for k in keys if earlier.get(k) != now.get(k)}


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _check_same_arrays(expected, found, where: Path) -> None:
    # orbax's metadata turns dataclasses and named tuples into dicts, so compare by key names.
    def describe(leaves):
        return {"/".join(_key_name(k) for k in path): tuple(np.shape(leaf)) for path, leaf in leaves}

    want, have = describe(expected), describe(found)
    if want.keys() != have.keys():
        missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        raise CheckpointMismatchError(
            f"Checkpoint {where} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}. "
            "Restore it into a state of the learner, task and model configuration that wrote it."
        )
    for name, shape in want.items():
        if have[name] != shape:
            raise CheckpointMismatchError(
                f"Checkpoint {where} does not match the model: {name} has shape {have[name]}, expected {shape}. "
                "Restore it into a state of the model configuration that wrote it."
            )
