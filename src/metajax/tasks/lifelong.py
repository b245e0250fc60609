"""Lifelong task streams in the manner of OSAKA (Caccia et al., 2020), drawn on the device from PRNG keys.

:class:`LifelongStream` is a schedule: each step stays on the current task with
probability ``p_stay``; on a switch it draws a previously seen task, a new one, or an
out-of-distribution task, by a configurable mixture, and raises a task-switch flag.
:func:`draw_batch` draws a step's examples from a pool of tasks, a
:class:`~metajax.tasks.sequences.TaskSequence`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metajax._checks import check_positive_int
from metajax.tasks.sequences import TaskSequence

SEEN, NEW, OOD = 0, 1, 2
"""Codes of :attr:`Schedule.source`: where a step's task came from."""


class Schedule(struct.PyTreeNode):
    """Which task each step of a lifelong stream serves.

    Attributes:
        task: ``[steps]`` int32, index into the pool (in-distribution tasks ``0..T-1``, then
            out-of-distribution tasks ``T..T+O-1``). New tasks are introduced in index order.
        source: ``[steps]`` int32, :data:`SEEN`, :data:`NEW` or :data:`OOD`: where the current
            segment's task came from (constant between switches).
        switched: ``[steps]`` bool, ``True`` on the first step of each segment (step 0 included).

    A pytree of these three arrays (a ``vmap`` over keys gives ``[draws, steps]`` each).
    """

    task: jax.Array
    source: jax.Array
    switched: jax.Array


class LifelongStream(struct.PyTreeNode):
    """A Markov task schedule in the manner of OSAKA (Caccia et al., 2020).

    Step 0 starts on a new task (task 0). At every later step the stream stays on the
    current task with probability ``p_stay``; otherwise it switches, drawing the kind of
    the next task from ``mixture = (seen, new, ood)``:

    * seen: uniformly one of the already introduced in-distribution tasks other than the
      current one;
    * new: the next not yet introduced in-distribution task;
    * ood: uniformly one of the out-of-distribution tasks other than the current one.

    A kind with no task available (no other seen task yet, no new task left, no OOD
    pool) is dropped and the mixture renormalised over the others; with none available
    the stream stays.

    A pytree without leaves (its configuration is static), so it can be passed to or
    closed over by a jitted function.

    Attributes:
        p_stay: probability of staying on the current task at each step.
        mixture: unnormalised weights ``(seen, new, ood)`` of the kinds drawn on a switch.

    Example:
        >>> s = LifelongStream(p_stay=0.8, mixture=(0.5, 0.5, 0.0)).schedule(jax.random.key(0), 100, num_tasks=5)
        >>> s.task.shape, bool(s.switched[0])
        ((100,), True)
    """

    p_stay: float = struct.field(pytree_node=False, default=0.9)
    mixture: tuple[float, float, float] = struct.field(pytree_node=False, default=(0.5, 0.5, 0.0))

    def __post_init__(self):
        if not (isinstance(self.p_stay, int | float) and 0.0 <= self.p_stay <= 1.0):
            raise ValueError(f"p_stay must be a probability in [0, 1], got {self.p_stay!r}.")
        mix = tuple(self.mixture)
        if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(
                f"mixture must be three non-negative weights (seen, new, ood) with a positive sum, "
                f"got {self.mixture!r}."
            )
        object.__setattr__(self, "mixture", tuple(float(m) for m in mix))

    def schedule(self, key: jax.Array, length: int, *, num_tasks: int, num_ood: int = 0) -> Schedule:
        """Draw a schedule of ``length`` steps over ``num_tasks`` in-distribution and ``num_ood`` OOD tasks.

        Pure and traceable (``length``, ``num_tasks`` and ``num_ood`` static): one ``lax.scan``.
        """
        check_positive_int("length", length)
        check_positive_int("num_tasks", num_tasks)
        check_positive_int("num_ood", num_ood, allow_zero=True)
        weights = jnp.asarray(self.mixture, jnp.float32)

        def step(carry, k):
            current, source, introduced = carry
            k_stay, k_kind, k_seen, k_ood = jax.random.split(k, 4)
            current_in = current < num_tasks
            seen_avail = introduced - current_in.astype(jnp.int32)
            ood_avail = num_ood - (~current_in).astype(jnp.int32)
            available = jnp.stack([seen_avail > 0, introduced < num_tasks, ood_avail > 0])
            w = jnp.where(available, weights, 0.0)
            switch = (jax.random.uniform(k_stay) >= self.p_stay) & (w.sum() > 0)
            kind = jax.random.categorical(k_kind, jnp.log(jnp.where(w > 0, w, 1e-30) / jnp.maximum(w.sum(), 1e-30)))
            r = jax.random.randint(k_seen, (), 0, jnp.maximum(seen_avail, 1))
            seen_task = r + (current_in & (r >= current)).astype(jnp.int32)
            ro = jax.random.randint(k_ood, (), 0, jnp.maximum(ood_avail, 1))
            ood_task = num_tasks + ro + ((~current_in) & (ro >= current - num_tasks)).astype(jnp.int32)
            nxt = jnp.select([kind == SEEN, kind == NEW], [seen_task, introduced], ood_task)
            current = jnp.where(switch, nxt, current)
            source = jnp.where(switch, kind, source)
            introduced = introduced + (switch & (kind == NEW)).astype(jnp.int32)
            return (current, source, introduced), (current, source, switch)

        start = (jnp.int32(0), jnp.int32(NEW), jnp.int32(1))
        _, (task, source, switched) = jax.lax.scan(step, start, jax.random.split(key, length - 1))
        first = lambda v, a: jnp.concatenate([jnp.asarray([v], a.dtype), a])
        return Schedule(first(0, task.astype(jnp.int32)), first(NEW, source.astype(jnp.int32)), first(True, switched))


def draw_batch(key: jax.Array, pool: TaskSequence, task: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` training examples of pool task ``task`` (uniform, with replacement): ``(x, y)``."""
    idx = jax.random.randint(key, (batch_size,), 0, pool.train_x.shape[1])
    return pool.train_x[task, idx], pool.train_y[task, idx]
