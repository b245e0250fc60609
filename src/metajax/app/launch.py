"""Where ``metajax train`` runs: ``--devices`` of this host, or several hosts with ``--coordinator``.

Every process of a multi-host run is started with the same command line (except
``--process-id``) and the same ``--out`` on a filesystem they share. Each joins the run
(``jax.distributed.initialize``), the tasks of each meta-step are split over the devices of
every host (:func:`metajax.distributed.task_mesh`), all of them write their part of each
checkpoint (orbax), and process 0 alone owns the run folder: it claims it and writes the
log, the TensorBoard events and ``metrics.json``.
"""

from __future__ import annotations

import argparse
from typing import Any

from metajax.app.errors import CommandError

# Settings of where a run executes; a resumed run may change them (the sharded step follows
# the single-device one to float summation order).
RESUMABLE = ("devices", "mesh", "coordinator", "num_processes", "process_id")


def _devices(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--devices``, ``--mesh``, ``--coordinator``, ``--num-processes`` and ``--process-id`` of ``metajax train``."""
    parser.add_argument(
        "--devices",
        type=_devices,
        default=None,
        help="devices to split each meta-step's tasks over: a number or 'all' (default 1; all with --coordinator)",
    )
    parser.add_argument("--mesh", action="store_true", help="split the tasks over every device (--devices all)")
    parser.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="join a multi-host run whose process 0 listens at HOST:PORT; 'auto' on SLURM or Cloud TPU (README)",
    )
    parser.add_argument("--num-processes", type=int, default=None, help="with --coordinator: processes in the run")
    parser.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process, 0 to N-1")


def check(args: argparse.Namespace) -> None:
    """Refuse inconsistent device and multi-host flags (before anything starts)."""
    if args.mesh and args.devices is not None:
        raise CommandError(f"--mesh is --devices all; pass one of them, got --mesh and --devices {args.devices}.")
    given = [
        f for f, v in (("--num-processes", args.num_processes), ("--process-id", args.process_id)) if v is not None
    ]
    if args.coordinator is None:
        if given:
            raise CommandError(f"{given[0]} needs --coordinator HOST:PORT, the address of the run's process 0.")
        return
    if args.coordinator == "auto":
        if given:
            raise CommandError(f"{given[0]} is found by --coordinator auto; give HOST:PORT to set it yourself.")
        return
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--coordinator must be HOST:PORT or 'auto', got {args.coordinator!r}.")
    if len(given) < 2:
        raise CommandError("--coordinator HOST:PORT needs --num-processes and --process-id too.")
    if args.num_processes < 1:
        raise CommandError(f"--num-processes must be a positive integer, got {args.num_processes}.")
    if not 0 <= args.process_id < args.num_processes:
        raise CommandError(f"--process-id must be in [0, {args.num_processes}), got {args.process_id}.")


def join(args: argparse.Namespace) -> None:
    """Join the multi-host run of ``--coordinator`` (nothing without it, or once joined); before other JAX calls."""
    if args.coordinator is None:
        return
    import jax

    from metajax import distributed

    if jax.distributed.is_initialized():  # --seeds checks its first seed's flags, then trains each seed
        return

    if args.coordinator == "auto":
        distributed.initialize()
    else:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def is_primary(args: argparse.Namespace) -> bool:
    """Whether this process owns the run folder: process 0, the only one without ``--coordinator``."""
    if args.coordinator is None:
        return True
    import jax

    return jax.process_index() == 0


def mesh(args: argparse.Namespace) -> Any:
    """The task mesh of ``--devices`` (``None``: one device, the plain step); refuses what cannot be split."""
    import jax

    from metajax import distributed

    count = jax.device_count()
    given = (
        "all" if args.mesh else args.devices if args.devices is not None else ("all" if jax.process_count() > 1 else 1)
    )
    wanted: int = count if given == "all" else int(given)
    if args.meta_batch % wanted:
        raise CommandError(f"--meta-batch {args.meta_batch} must be a multiple of the {wanted} --devices.")
    if wanted > count:
        raise CommandError(
            f"--devices {wanted}: only {count} {jax.default_backend()} devices are visible "
            "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)."
        )
    if jax.process_count() > 1 and wanted != count:
        raise CommandError(f"--devices {wanted}: a multi-host run uses every host's devices, all {count} of them.")
    return None if wanted == 1 else distributed.task_mesh(jax.devices()[:wanted])


def local(tree: Any) -> Any:
    """``tree``'s replicated arrays as this process's copy on one device (for evaluation after a sharded run)."""
    import jax

    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)
