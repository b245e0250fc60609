"""How the ``metajax`` commands fail: one line ``metajax COMMAND: message`` on stderr and exit status 2.

:func:`run_command` is the one error boundary. The commands raise :class:`CommandError`
for what they refuse; the library's expected errors (bad values, missing files, checkpoints
that do not fit, a non-finite loss, device memory exhausted) are reported the same way,
with the library's Python argument names (``inner_lr``) replaced by the command's flags
(``--inner-lr``). ``--debug`` re-raises them with the traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

EXPECTED = (ValueError, TypeError, OSError, FloatingPointError)
SEED_BOUND = 2**32  # jax.random.key takes the seed modulo 2**32: larger seeds repeat smaller ones

# The library's argument names and the flag of each command that sets them. Only names that
# mean one flag of the command are here (``ways`` may be --ways or --train-ways; ``num_steps``
# --steps or --eval-steps).
FLAGS: dict[str, dict[str, str]] = {
    "train": {
        "inner_lr": "--inner-lr",
        "inner_steps": "--inner-steps",
        "meta_batch": "--meta-batch",
        "num_tasks": "--eval-tasks",
        "steps_per_call": "--steps-per-call",
        "log_every": "--log-every",
        "task_batching": "--task-batching",
        "shots": "--shots",
        "queries": "--query",
        "root": "--data-root",
        "data_root": "--data-root",
        "prox": "--imaml-prox",
        "contrastive": "--feat-contrastive",
        "cg_steps": "--imaml-cg-steps",
        "cg_damping": "--imaml-cg-damping",
        "inner_clip": "--imaml-inner-clip",
    },
    "eval": {
        "num_tasks": "--eval-tasks",
        "num_steps": "--eval-steps",
        "root": "--data-root",
        "data_root": "--data-root",
    },
    "continual": {
        "lr": "--lr",
        "p_stay": "--p-stay",
        "mixture": "--mixture",
        "capacity": "--capacity",
        "replay_batch": "--replay-batch",
        "strength": "--ewc-strength",
        "batch_size": "--batch-size",
        "train_per_task": "--train-per-task",
        "test_per_task": "--test-per-task",
        "root": "--data-root",
        "data_root": "--data-root",
    },
}


class CommandError(SystemExit):
    """What a command refuses: ``str()`` is the one-line message.

    Raised by a command, ``code`` is the message, so that a script calling the command
    outside :func:`run_command` still prints it; :func:`run_command` prints it and raises
    one with ``code`` the exit status.
    """

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message if code is None else code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def flag(name: str) -> str:
    """The flag of an ``argparse`` destination: ``inner_lr`` -> ``--inner-lr``."""
    return "--" + name.replace("_", "-")


def with_flags(message: str, command: str) -> str:
    """``message`` with the library's argument names as ``command``'s flags.

    A name is replaced where the library's messages name an argument: before ``must``, ``=``
    or `` + `` (``inner_lr must ...``, ``got queries=5``, ``shots + queries must ...``).
    """
    names = FLAGS.get(command, {})
    if not names:
        return message
    pattern = r"(?<![\w/.-])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b(?= must| \+ |=)"
    return re.sub(pattern, lambda m: names[m[1]], message)


def _device_out_of_memory(error: BaseException) -> bool:
    # jax.errors.JaxRuntimeError, named XlaRuntimeError (jaxlib.xla_extension) before JAX 0.4.36;
    # matched by name so that neither import is needed here.
    names = {kind.__name__ for kind in type(error).__mro__}
    return bool(names & {"JaxRuntimeError", "XlaRuntimeError"}) and str(error).startswith("RESOURCE_EXHAUSTED")


def describe(error: BaseException, command: str) -> str | None:
    """The one-line message of an expected error, or ``None`` for an unexpected one (a bug)."""
    if _device_out_of_memory(error):
        first = str(error).splitlines()[0]
        return f"the device ran out of memory ({first}); lower --meta-batch, --eval-tasks or --steps-per-call."
    if not isinstance(error, EXPECTED):
        return None
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return with_flags(text, command)


def run_command(command: str, body: Callable[[], T], debug: bool = False) -> T:
    """Run ``body`` (a command); an expected error is printed as one line and raised as a :class:`CommandError`.

    Raises:
        CommandError: exit status 2 for an error, 130 for Ctrl-C (its message already printed).
    """
    try:
        return body()
    except CommandError as error:
        line, code = error.message, error.code if isinstance(error.code, int) else 2
    except KeyboardInterrupt:
        if debug:
            raise
        line, code = "interrupted (Ctrl-C).", 130
    except Exception as error:
        described = None if debug else describe(error, command)
        if described is None:
            raise
        line, code = described, 2
    line = f"metajax {command}: {line}"
    print(line, file=sys.stderr)
    raise CommandError(line, code)


def warn(message: str) -> None:
    """A command's warning: one line ``metajax: warning: message`` on stderr; the command goes on."""
    print(f"metajax: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- argument checks


def check_finite(args: argparse.Namespace) -> None:
    """Refuse a non-finite float (``inf``, ``nan``) in any of ``args``' values (lists included)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise CommandError(f"{flag(name)} must be a finite number, got {bad[0]}.")


def check_seed(seed: int | None) -> None:
    """Refuse a ``--seed`` outside ``[0, 2**32)``."""
    if seed is not None and not 0 <= seed < SEED_BOUND:
        raise CommandError(f"--seed must be in [0, 2**32) (JAX uses 32 bits of it), got {seed}.")


def check_positive_ints(args: argparse.Namespace, names: tuple[str, ...], *, optional: bool = False) -> None:
    """Refuse a non-positive integer among ``names`` (``optional``: ``None`` is allowed)."""
    for name in names:
        value = getattr(args, name)
        if value is None and optional:
            continue
        if value <= 0:
            raise CommandError(f"{flag(name)} must be a positive integer, got {value}.")


def check_eval(args: argparse.Namespace) -> None:
    """Refuse too few ``--eval-tasks`` (an interval needs 2) or a negative ``--eval-steps``."""
    if args.eval_tasks < 2:
        raise CommandError(f"--eval-tasks must be at least 2 (a 95% interval needs two tasks), got {args.eval_tasks}.")
    if args.eval_steps is not None and args.eval_steps < 0:
        raise CommandError(f"--eval-steps must be non-negative, got {args.eval_steps}.")


def output_file_folder(path: Path) -> None:
    """Create the folder of an output file (``bench --out FILE``), or say why it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise CommandError(f"--out {path}: {error.filename} exists as a file; pass a directory.") from error
