"""Several devices and hosts: mesh construction, placement and multi-host start.

The sharded meta-step itself is :func:`metajax.train` / :func:`metajax.make_train_step`
with ``mesh=``: a ``Mesh`` with a task axis, episodes sharded, parameters replicated.
A meta-step's tasks are independent until their losses are averaged, so data
parallelism over tasks is exact: each device evaluates ``meta_batch / devices`` of the
tasks, and the mean loss and gradient are averaged across devices (``lax.pmean``, an
all-reduce). The episodes are drawn from the state's key exactly as on one device, so a
sharded run follows the single-device run to float summation order. The same code runs
on one device (a mesh of one), on N devices of one host, and on several hosts.

Several hosts: start the same program on every host and call :func:`initialize` first
(it wraps ``jax.distributed.initialize``); ``jax.devices()`` then lists every host's
devices, :func:`task_mesh` spans them all, and each host computes its devices' share of
the tasks. Every host must pass the same ``meta_batch``, seed and task distribution::

    # on each of 2 hosts (process_id 0 and 1):
    import metajax.distributed as md
    md.initialize("10.0.0.1:1234", num_processes=2, process_id=PROCESS_ID)
    mesh = md.task_mesh()                      # all devices of all hosts
    state, history = metajax.train(learner, task, optax.adam(1e-3), key=jax.random.key(0),
                                   num_steps=10_000, meta_batch=64, mesh=mesh)

On managed clusters (SLURM, Cloud TPU) ``initialize()`` with no arguments finds the
coordinator itself. Test several devices on one CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

TASK_AXIS = "tasks"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> None:
    """Join a multi-host run: ``jax.distributed.initialize`` with the same arguments.

    Call it once per process, before any other JAX call. With no arguments JAX detects
    the cluster (SLURM, Cloud TPU, Kubernetes with the right environment).
    """
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def task_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = TASK_AXIS) -> Mesh:
    """A one-axis ``Mesh`` over ``devices`` (default: every device of every host) named ``axis_name``."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("task_mesh needs at least one device, got an empty list.")
    return Mesh(np.asarray(devices), (axis_name,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree``'s arrays placed on every device of ``mesh`` (parameters, optimizer state, keys).

    With several processes each places its own copy, which must be equal on all of them (a
    committed array, e.g. one restored from a checkpoint, would otherwise be sent between hosts).
    """
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
        return jax.device_put(np.asarray(leaf), sharding)

    return jax.tree.map(put, tree)


def task_sharding(mesh: Mesh, axis_name: str = TASK_AXIS) -> NamedSharding:
    """The sharding that splits an array's leading (task) axis over ``mesh``'s ``axis_name``."""
    return NamedSharding(mesh, P(axis_name))


def shard_tasks(tree: Any, mesh: Mesh, axis_name: str = TASK_AXIS) -> Any:
    """``tree``'s arrays split along their leading (task) axis over ``mesh``'s ``axis_name``."""
    return jax.device_put(tree, task_sharding(mesh, axis_name))
