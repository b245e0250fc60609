"""Several devices and hosts: a ``Mesh`` with a task axis; episodes sharded, parameters replicated.

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
    step = md.make_sharded_train_step(learner, task, optax.adam(1e-3), meta_batch=64, mesh=mesh)
    state = md.replicate(metajax.init_state(learner, task, optax.adam(1e-3), jax.random.key(0)), mesh)
    for _ in range(num_steps):
        state, metrics = step(state)

On managed clusters (SLURM, Cloud TPU) ``initialize()`` with no arguments finds the
coordinator itself. Test several devices on one CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metajax._checks import check_positive_int
from metajax._tree import partition
from metajax.tasks.base import TaskDistribution
from metajax.training import TrainState, batch_value_and_grad, meta_step

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
    """``tree``'s arrays placed on every device of ``mesh`` (parameters, optimizer state, keys)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_tasks(tree: Any, mesh: Mesh, axis_name: str = TASK_AXIS) -> Any:
    """``tree``'s arrays split along their leading (task) axis over ``mesh``'s ``axis_name``."""
    return jax.device_put(tree, NamedSharding(mesh, P(axis_name)))


def sharded_meta_step(
    learner: Any,
    task: TaskDistribution,
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    mesh: Mesh,
    task_batching: str = "vmap",
    axis_name: str = TASK_AXIS,
) -> Callable[[TrainState], tuple[TrainState, dict]]:
    """The un-jitted meta-step of :func:`metajax.training.meta_step`, with the tasks sharded over ``mesh``.

    Draws the same episodes from the state's key as the single-device step; each device
    evaluates its ``meta_batch / devices`` tasks (``vmap`` or ``lax.map``), and the mean
    loss, metrics and gradient are averaged over devices before one ``optimizer`` update,
    which every device applies to its replica of the parameters.
    """
    check_positive_int("meta_batch", meta_batch)
    devices = mesh.shape[axis_name]
    if meta_batch % devices:
        raise ValueError(
            f"meta_batch must be a multiple of the {devices} devices on mesh axis {axis_name!r} "
            f"(each takes an equal share of the tasks), got meta_batch={meta_batch}."
        )

    def local(params, episodes, keys):
        # Mark the replicated parameters as varying over the task axis: a gradient with
        # respect to a device-invariant value would be summed over devices (its transpose
        # is a psum), which would mix the tasks of all devices into every inner step.
        params = jax.lax.pcast(params, axis_name, to="varying")
        keys = jax.random.wrap_key_data(keys)
        # Equal shares, so the mean of the devices' means is the mean over all tasks.
        return jax.lax.pmean(batch_value_and_grad(learner, params, episodes, keys, task_batching), axis_name)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis_name), P(axis_name)), out_specs=P())

    def value_and_grad(params, episodes, keys):
        return sharded(params, episodes, jax.random.key_data(keys))  # raw keys split over the task axis

    return meta_step(learner, task, optimizer, meta_batch, task_batching, value_and_grad=value_and_grad)


def make_sharded_train_step(
    learner: Any,
    task: TaskDistribution,
    optimizer: optax.GradientTransformation,
    meta_batch: int,
    mesh: Mesh | None = None,
    *,
    steps_per_call: int = 1,
    task_batching: str = "vmap",
    axis_name: str = TASK_AXIS,
) -> Callable[[TrainState], tuple[TrainState, dict]]:
    """:func:`metajax.make_train_step` on a mesh: ``steps_per_call`` sharded meta-steps per dispatch.

    Args:
        learner: object with ``loss`` (the learner contract).
        task: task distribution; its arrays (a dataset) are replicated on every device.
        optimizer: the outer Optax transformation.
        meta_batch: tasks per meta-step, a multiple of the mesh's devices.
        mesh: the mesh (default :func:`task_mesh` over every device).
        steps_per_call: meta-steps per dispatch (a ``lax.scan``).
        task_batching: ``"vmap"`` or ``"map"``, how each device batches its tasks.
        axis_name: the mesh axis the tasks are split over.

    Returns:
        ``state -> (state, metrics)``; the state comes back replicated over the mesh and
        the input state's buffers are donated. Metrics are stacked ``[steps_per_call]``.
    """
    check_positive_int("steps_per_call", steps_per_call)
    mesh = task_mesh(axis_name=axis_name) if mesh is None else mesh
    task_arrays, rebuild_task = partition(task)
    replicated = NamedSharding(mesh, P())

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=replicated)
    def many(state, task_arrays):
        one = sharded_meta_step(
            learner, rebuild_task(task_arrays), optimizer, meta_batch, mesh, task_batching, axis_name
        )
        return jax.lax.scan(lambda s, _: one(s), state, None, length=steps_per_call)

    task_arrays = replicate(task_arrays, mesh)
    return lambda state: many(state, task_arrays)
