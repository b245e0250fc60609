"""Meta-training episodes for OML (Javed & White, 2019): a trajectory to learn online, plus a remember set.

:class:`Trajectories` draws them from a pool of tasks (classes, rotations, ...),
:class:`SineTrajectories` from fresh random sine waves. Both are task distributions
(``sample(key, num_tasks) -> Episode`` and a ``kind``) usable with :func:`metajax.train`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from metajax._checks import check_choice, check_positive_int, check_range
from metajax.episode import Episode
from metajax.tasks.sequences import _as_float, incremental_sine


class Trajectories(struct.PyTreeNode):
    """OML meta-training episodes from a pool of tasks (a class, a rotation, ...).

    Each episode's support set is a *trajectory*: ``tasks`` distinct pool tasks, ``shots``
    examples each, one task after the other (learned online, one example at a time, in
    OML's inner loop). Its query set is the *remember set*: ``remember`` examples of
    uniformly random pool tasks. With ``pool_x`` a class-major image array
    ``[classes, examples, H, W, C]`` and ``pool_y = None``, the pool tasks are classes and
    the labels are global class ids (OML's Omniglot meta-training).

    A pytree whose leaves are the pool arrays, so it can be passed to a jitted function.

    Attributes:
        pool_x: ``[P, N, *feature_shape]`` (uint8 images are scaled to [0, 1]).
        pool_y: ``[P, N, *label_shape]``, or ``None`` for labels = pool task index.
        tasks: pool tasks per trajectory.
        shots: examples per task in the trajectory.
        remember: examples in the remember set.
        kind: ``"classification"`` or ``"regression"``.
    """

    pool_x: jax.Array
    pool_y: jax.Array | None
    tasks: int = struct.field(pytree_node=False, default=1)
    shots: int = struct.field(pytree_node=False, default=10)
    remember: int = struct.field(pytree_node=False, default=15)
    kind: str = struct.field(pytree_node=False, default="classification")

    def __post_init__(self):
        # Static configuration only: the pool arrays may be tracers or placeholders when
        # JAX rebuilds the pytree.
        for name in ("tasks", "shots", "remember"):
            check_positive_int(name, getattr(self, name))
        check_choice("kind", self.kind, ("classification", "regression"))

    def sample(self, key: jax.Array, num_tasks: int) -> Episode:
        """``num_tasks`` episodes: support ``[num_tasks, tasks * shots, ...]``, query ``[num_tasks, remember, ...]``."""
        check_positive_int("num_tasks", num_tasks)
        return jax.vmap(self._one)(jax.random.split(key, num_tasks))

    def _one(self, key):
        pool, n = self.pool_x.shape[:2]
        if self.tasks > pool or self.shots > n:
            raise ValueError(
                f"Trajectories: tasks={self.tasks} and shots={self.shots} must fit the pool "
                f"{tuple(self.pool_x.shape[:2])}."
            )
        k_task, k_ex, k_rt, k_re = jax.random.split(key, 4)
        chosen = jax.random.permutation(k_task, pool)[: self.tasks]
        ex = jnp.argsort(jax.random.uniform(k_ex, (self.tasks, n)), axis=1)[:, : self.shots]
        rt = jax.random.randint(k_rt, (self.remember,), 0, pool)
        re = jax.random.randint(k_re, (self.remember,), 0, n)
        sx = self.pool_x[chosen[:, None], ex].reshape(self.tasks * self.shots, *self.pool_x.shape[2:])
        qx = self.pool_x[rt, re]
        if self.pool_y is None:
            sy = jnp.repeat(chosen.astype(jnp.int32), self.shots)
            qy = rt.astype(jnp.int32)
        else:
            sy = self.pool_y[chosen[:, None], ex].reshape(self.tasks * self.shots, *self.pool_y.shape[2:])
            qy = self.pool_y[rt, re]
        return Episode(_as_float(sx), sy, _as_float(qx), qy)


class SineTrajectories(struct.PyTreeNode):
    """OML's meta-training episodes for incremental sine waves.

    A trajectory is ``functions`` fresh random sines, ``shots`` points each, presented one
    function after the other with input ``[x, one_hot(slot)]``; the remember set is
    ``remember`` points of the same functions (Javed & White, 2019, regression setting).
    The sines and their points are drawn as in :func:`~metajax.tasks.sequences.incremental_sine`
    (by :class:`~metajax.tasks.Sinusoid`). A pytree without leaves (its configuration is static).

    Attributes:
        functions: sine functions per trajectory.
        shots: points per function in the trajectory.
        remember: points in the remember set.
        amplitude: range of the amplitudes.
        phase: range of the phases.
        x_range: range of the inputs.

    Example:
        >>> ep = SineTrajectories(functions=10, shots=8, remember=20).sample(jax.random.key(0), 2)
        >>> ep.support_x.shape, ep.query_y.shape
        ((2, 80, 11), (2, 20, 1))
    """

    functions: int = struct.field(pytree_node=False, default=10)
    shots: int = struct.field(pytree_node=False, default=32)
    remember: int = struct.field(pytree_node=False, default=32)
    amplitude: tuple[float, float] = struct.field(pytree_node=False, default=(0.1, 5.0))
    phase: tuple[float, float] = struct.field(pytree_node=False, default=(0.0, math.pi))
    x_range: tuple[float, float] = struct.field(pytree_node=False, default=(-5.0, 5.0))

    kind = "regression"

    def __post_init__(self):
        for name in ("functions", "shots", "remember"):
            check_positive_int(name, getattr(self, name))
        for name in ("amplitude", "phase", "x_range"):
            check_range(name, getattr(self, name))

    def sample(self, key: jax.Array, num_tasks: int) -> Episode:
        """Support ``[num_tasks, functions * shots, 1 + functions]``, query ``[num_tasks, remember, 1 + functions]``."""
        check_positive_int("num_tasks", num_tasks)
        return jax.vmap(self._one)(jax.random.split(key, num_tasks))

    def _one(self, key):
        k_seq, k_pick = jax.random.split(key)
        f = self.functions
        seq = incremental_sine(
            k_seq,
            num_functions=f,
            train_per_function=self.shots,
            test_per_function=self.remember,
            amplitude=self.amplitude,
            phase=self.phase,
            x_range=self.x_range,
        )
        sx, sy = seq.train_x.reshape(f * self.shots, -1), seq.train_y.reshape(f * self.shots, 1)
        # Remember set: fresh points of the same functions.
        qx_all, qy_all = seq.test_x.reshape(f * self.remember, -1), seq.test_y.reshape(f * self.remember, 1)
        pick = jax.random.randint(k_pick, (self.remember,), 0, f * self.remember)
        return Episode(sx, sy, qx_all[pick], qy_all[pick])
