"""Atomic, resumable checkpoints of a run's :class:`~metajax.training.TrainState` (orbax).

A checkpoint holds everything the next meta-step depends on (meta-parameters, optimizer
state, PRNG key, step, model state such as running batch-norm statistics) plus a small
JSON record (the run's config) and, for a run fed by a host pipeline, the pipeline's
position (its Grain iterator state), written in the same step folder so params and
position are saved together or not at all. orbax writes each checkpoint to a temporary
folder (``<step>.orbax-checkpoint-tmp``) and renames it when complete, so a run killed at
any moment, or interrupted during a save, leaves the previous checkpoints intact and no
half-written step among :meth:`Checkpointer.steps`; the next save removes such leftovers.
The newest ``keep`` are kept. A checkpoint that cannot be read (a corrupt array file or
record) is skipped, with a warning, for the next older one.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from metajax._checks import check_positive_int


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit what is restored: other array shapes or structure, or another configuration."""


class CorruptCheckpointError(RuntimeError):
    """No checkpoint asked for could be read (truncated or corrupt files); the message gives each one's cause."""


# orbax's name for a step being written (``orbax.checkpoint`` ``TMP_DIR_SUFFIX``).
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


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
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "record": ocp.JsonCheckpointHandler(),
            "pipeline": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._written: set[int] = set()  # steps this Checkpointer saved
        self._last: int | None = None  # the step maybe_save counts crossings from

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first (a save in progress is not one)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    def maybe_save(self, state: Any, record: dict | None = None, pipeline: dict | None = None) -> bool:
        """:meth:`save` when ``state.step`` crossed a multiple of ``every`` since the last save (or older one)."""
        step = int(state.step)
        if self._last is None or self._last > step:
            self._last = max((s for s in self.steps() if s < step), default=0)
        if step // self.every > self._last // self.every:
            self.save(state, record, pipeline)
            return True
        return False

    def save(self, state: Any, record: dict | None = None, pipeline: dict | None = None) -> None:
        """Write ``state`` (any pytree with an integer ``step``), a JSON ``record`` and ``pipeline`` now.

        ``pipeline`` is an episode feed's position at ``state`` (JSON-able, as
        :meth:`~metajax.tasks.HostEpisodes.get_state` returns), read back with
        :meth:`pipeline_state`; it is written into the same step folder as the state.

        A checkpoint of the same step left by an earlier run (one a resumed run went past,
        say because it was corrupt) is replaced; one this Checkpointer wrote is kept.
        """
        step = int(state.step)
        if step in self._written:
            return
        if not self._written:  # the first save: remove what an interrupted save left behind
            for leftover in self.directory.glob(f"*{_TMP_SUFFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        if step in self.steps():
            self._manager.delete(step)
        items = {"state": ocp.args.StandardSave(state), "record": ocp.args.JsonSave(record or {})}
        if pipeline is not None:
            items["pipeline"] = ocp.args.JsonSave(pipeline)
        args = ocp.args.Composite(**items)
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        self._written.add(step)
        self._last = step

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state at ``step`` (default: the newest that reads back), shaped like ``like``, and its record.

        A checkpoint that cannot be read (a truncated or corrupt array file or record) is
        reported with a warning and the next older one is used; the corrupt one is left on
        disk (the next save of its step replaces it).

        Raises:
            FileNotFoundError: no checkpoint in ``directory``, or none at ``step`` (the
                message lists the steps there are).
            CheckpointMismatchError: the checkpoint's arrays do not fit ``like`` (another model).
            CorruptCheckpointError: no checkpoint (or the one at ``step``) could be read.
        """
        return self._first_readable(like, step)

    def resume(
        self, like: Any, record: dict | None = None, ignore: tuple[str, ...] = (), step: int | None = None
    ) -> tuple[Any, dict | None]:
        """The newest readable checkpoint (or the one at ``step``) and its record; ``(like, None)`` when there is none.

        With ``record`` (the configuration of the run about to continue), a checkpoint saved
        with another configuration is refused: every setting outside ``ignore`` must be equal.

        Raises:
            FileNotFoundError: no checkpoint at ``step`` (the message lists the steps there are).
            CheckpointMismatchError: the checkpoint's record or arrays differ from ``record`` / ``like``.
            CorruptCheckpointError: no checkpoint could be read.
        """
        if step is None and not self.steps():
            return like, None
        return self._first_readable(like, step, record, ignore)

    def _first_readable(
        self, like: Any, step: int | None, record: dict | None = None, ignore: tuple[str, ...] = ()
    ) -> tuple[Any, dict]:
        """:meth:`restore` of ``step`` or, when ``None``, of the newest checkpoint that reads back."""
        available = self.steps()
        if step is not None and step not in available:
            raise FileNotFoundError(
                f"No checkpoint at step={step!r} in {self.directory}; the steps there are {available or 'none'}."
            )
        candidates = [step] if step is not None else available[::-1]
        if not candidates:
            raise FileNotFoundError(f"No checkpoint in {self.directory} to resume from.")
        causes = []
        for i, s in enumerate(candidates):
            try:
                saved = self._read_record(s)
            except Exception as error:  # noqa: BLE001 - orbax and json raise many kinds
                cause = f"its record: {_cause(error)}"
            else:
                if record is not None:
                    _refuse_other_settings(self.directory, saved, record, ignore)
                try:
                    return self._restore(like, s), saved
                except CheckpointMismatchError:
                    raise
                except Exception as error:  # noqa: BLE001 - any read failure means try the older one
                    cause = _cause(error)
            causes.append(f"step {s}: {cause}")
            if i + 1 < len(candidates):
                warnings.warn(
                    f"Checkpoint {self.directory / str(s)} could not be read ({cause}); trying an older one.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if step is not None:
            raise CorruptCheckpointError(
                f"The checkpoint chosen with step={step} ({self.directory / str(step)}) could not be read "
                f"({causes[0]}); the steps there are {available}."
            )
        raise CorruptCheckpointError(
            f"None of the {len(candidates)} checkpoints in {self.directory} could be read ("
            + "; ".join(causes)
            + "). Delete the directory to start afresh, or restore it from a copy."
        )

    def _restore(self, like: Any, step: int) -> Any:
        """The state of checkpoint ``step``, after checking its arrays against ``like``'s.

        The arrays are read into the checkpoint's own tree and put back where ``like`` has
        them, by name, so subtrees without arrays need not match: a ``like`` with a field
        that holds none (``TrainState.model_state={}``) reads a checkpoint written before it.
        """
        expected = jax.tree_util.tree_flatten_with_path(like)[0]
        metadata = self._manager.item_metadata(step)["state"]
        found = jax.tree_util.tree_flatten_with_path(metadata)[0]
        _check_same_arrays(expected, found, self.directory / str(step))
        abstract = {_path_name(path): ocp.utils.to_shape_dtype_struct(leaf) for path, leaf in expected}
        target = jax.tree_util.tree_map_with_path(lambda path, _: abstract[_path_name(path)], metadata)
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        by_name = {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(restored["state"])[0]}
        return jax.tree.unflatten(jax.tree.structure(like), [by_name[_path_name(path)] for path, _ in expected])

    def record(self, step: int) -> dict:
        """The JSON record saved with the checkpoint at ``step`` (the run's config).

        Raises:
            CorruptCheckpointError: the record does not read back as a JSON object.
        """
        try:
            return self._read_record(step)
        except Exception as error:  # noqa: BLE001 - orbax and json raise many kinds
            raise CorruptCheckpointError(
                f"The record of checkpoint {self.directory / str(step)} could not be read ({_cause(error)})."
            ) from error

    def pipeline_state(self, step: int) -> dict | None:
        """The episode feed's position saved with the checkpoint at ``step``, or ``None`` if it holds none.

        Raises:
            FileNotFoundError: no checkpoint at ``step`` (the message lists the steps there are).
            CorruptCheckpointError: the saved position does not read back as a JSON object.
        """
        available = self.steps()
        if step not in available:
            raise FileNotFoundError(
                f"No checkpoint at step={step!r} in {self.directory}; the steps there are {available or 'none'}."
            )
        if not (self.directory / str(step) / "pipeline").is_dir():
            return None
        try:
            saved = self._manager.restore(step, args=ocp.args.Composite(pipeline=ocp.args.JsonRestore()))["pipeline"]
            if not isinstance(saved, dict):
                raise ValueError(f"a JSON object was expected, got {type(saved).__name__}")
        except Exception as error:  # noqa: BLE001 - orbax and json raise many kinds
            raise CorruptCheckpointError(
                f"The pipeline position of checkpoint {self.directory / str(step)} could not be read ({_cause(error)})."
            ) from error
        return dict(saved)

    def _read_record(self, step: int) -> dict:
        saved = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
        if not isinstance(saved, dict | None):
            raise ValueError(f"a JSON object was expected, got {type(saved).__name__}")
        return dict(saved or {})

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


def _refuse_other_settings(directory: Path, saved: dict, record: dict, ignore: tuple[str, ...]) -> None:
    differ = differing_settings(saved, json.loads(json.dumps(record)), ignore)
    if differ:
        raise CheckpointMismatchError(
            f"{directory} holds checkpoints of another configuration (setting: (checkpoint's, now) = {differ})."
        )


def _cause(error: BaseException) -> str:
    """``"Type: first line"`` of ``error``, without TensorStore's spec dump and at most 300 characters."""
    lines = str(error).strip().splitlines()
    first = lines[0].split(" [tensorstore_spec=")[0] if lines else ""
    return f"{type(error).__name__}: {first[:300]}{'...' if len(first) > 300 else ''}"


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_name(path) -> str:
    """A leaf's path as ``"a/b/0"``: orbax's metadata turns dataclasses and named tuples into dicts, so
    leaves are matched by key names."""
    return "/".join(_key_name(k) for k in path)


def _check_same_arrays(expected, found, where: Path) -> None:
    def describe(leaves):
        return {_path_name(path): tuple(np.shape(leaf)) for path, leaf in leaves}

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
