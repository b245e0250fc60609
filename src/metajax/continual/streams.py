"""Task streams for continual learning, drawn on the device from PRNG keys with fixed shapes.

* :class:`TaskSequence`: ``T`` tasks, each with a training and a test set of fixed size.
  Built by :func:`class_incremental` (new Omniglot characters per task),
  :func:`domain_incremental` (rotated or permuted images, same labels) and
  :func:`incremental_sine` (OML's incremental sine waves).
* :class:`LifelongStream`: an OSAKA-style schedule (Caccia et al., 2020). Each step stays on
  the current task with probability ``p_stay``; on a switch it draws a previously seen
  task, a new one, or an out-of-distribution task, by a configurable mixture, and raises
  a task-switch flag.
* :class:`Trajectories` and :class:`SineTrajectories`: meta-training episodes for OML
  (a trajectory to learn online, plus a remember set), usable with :func:`metajax.train`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from metajax._checks import check_choice, check_positive_int, check_range
from metajax.episode import Episode

SEEN, NEW, OOD = 0, 1, 2
"""Codes of :attr:`Schedule.source`: where a step's task came from."""


class TaskSequence(struct.PyTreeNode):
    """``T`` tasks with fixed-size training and test sets, stacked on a leading task axis.

    Attributes:
        train_x: ``[T, N, *feature_shape]`` float32, in the order the stream presents them.
        train_y: ``[T, N, *label_shape]``.
        test_x: ``[T, M, *feature_shape]`` float32.
        test_y: ``[T, M, *label_shape]``.
    """

    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array

    @property
    def num_tasks(self) -> int:
        """``T``."""
        return self.train_x.shape[0]

    def concatenate(self, other: TaskSequence) -> TaskSequence:
        """The tasks of ``self`` followed by those of ``other`` (e.g. an out-of-distribution pool)."""
        for field in ("train_x", "train_y", "test_x", "test_y"):
            a, b = getattr(self, field), getattr(other, field)
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise ValueError(
                    f"concatenate: {field} must match after the task axis, got {a.dtype} {tuple(a.shape)} and "
                    f"{b.dtype} {tuple(b.shape)}."
                )
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), self, other)


def _check_images(name: str, images, rank: int) -> jax.Array:
    if not hasattr(images, "shape") or images.ndim != rank:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        expected = "[classes, examples, H, W, C]" if rank == 5 else "[examples, H, W, C]"
        raise ValueError(f"{name} must be an array {expected}, got {shape}.")
    return _as_float(jnp.asarray(images))


def _as_float(images: jax.Array) -> jax.Array:
    """float32 inputs; uint8 images are scaled to [0, 1]."""
    return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)


def class_incremental(
    key: jax.Array,
    images,
    *,
    num_tasks: int,
    classes_per_task: int,
    train_per_class: int = 15,
    test_per_class: int = 5,
    order: str = "class",
) -> TaskSequence:
    """New classes in every task (class-incremental), e.g. Omniglot characters as in OML.

    ``num_tasks * classes_per_task`` classes are drawn at random; class ``k`` in draw
    order gets the global label ``k``, so a single head with
    ``num_tasks * classes_per_task`` outputs learns all of them. Per class,
    ``train_per_class`` and ``test_per_class`` distinct examples are drawn.

    Args:
        key: PRNG key.
        images: ``[classes, examples, H, W, C]``, uint8 (scaled to [0, 1]) or float.
        num_tasks: ``T``.
        classes_per_task: classes introduced by each task.
        train_per_class: training examples per class (OML: 15).
        test_per_class: test examples per class (OML: 5).
        order: ``"class"`` presents a task's training examples one class after the other
            (OML's protocol); ``"shuffled"`` interleaves them at random.

    Returns:
        ``TaskSequence`` with ``train_x [T, classes_per_task * train_per_class, H, W, C]``
        and int32 labels ``[T, classes_per_task * train_per_class]`` (test likewise).
    """
    images = _check_images("images", images, 5)
    for name, value in (
        ("num_tasks", num_tasks),
        ("classes_per_task", classes_per_task),
        ("train_per_class", train_per_class),
        ("test_per_class", test_per_class),
    ):
        check_positive_int(name, value)
    check_choice("order", order, ("class", "shuffled"))
    classes, examples = images.shape[:2]
    total = num_tasks * classes_per_task
    if total > classes:
        raise ValueError(
            f"num_tasks * classes_per_task = {total} exceeds the {classes} classes of images {tuple(images.shape)}."
        )
    if train_per_class + test_per_class > examples:
        raise ValueError(
            f"train_per_class + test_per_class = {train_per_class + test_per_class} exceeds the {examples} "
            f"examples per class of images {tuple(images.shape)}."
        )
    k_class, k_example, k_order = jax.random.split(key, 3)
    chosen = jax.random.permutation(k_class, classes)[:total]
    picks = jnp.argsort(jax.random.uniform(k_example, (total, examples)), axis=1)
    x = images[chosen[:, None], picks[:, : train_per_class + test_per_class]]  # [total, n, H, W, C]
    labels = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32)[:, None], x.shape[:2])
    feature = x.shape[2:]

    def per_task(a, n, offset):
        part = a[:, offset : offset + n].reshape(num_tasks, classes_per_task * n, *a.shape[2:])
        return part

    train_x, train_y = per_task(x, train_per_class, 0), per_task(labels, train_per_class, 0)
    test_x, test_y = per_task(x, test_per_class, train_per_class), per_task(labels, test_per_class, train_per_class)
    if order == "shuffled":
        perm = jnp.argsort(jax.random.uniform(k_order, train_y.shape), axis=1)
        train_x = jnp.take_along_axis(train_x, perm.reshape(*perm.shape, *(1,) * len(feature)), axis=1)
        train_y = jnp.take_along_axis(train_y, perm, axis=1)
    return TaskSequence(train_x, train_y, test_x, test_y)


def rotate(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotate ``[N, H, W, C]`` images counter-clockwise (as ``np.rot90``) about their centre (bilinear, zero fill)."""
    _, height, width, _ = images.shape
    theta = jnp.deg2rad(degrees)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    # Inverse map: the source pixel of each output pixel.
    src_y = cy + (yy - cy) * jnp.cos(theta) + (xx - cx) * jnp.sin(theta)
    src_x = cx - (yy - cy) * jnp.sin(theta) + (xx - cx) * jnp.cos(theta)

    def one_channel(img):
        return jax.scipy.ndimage.map_coordinates(img, [src_y, src_x], order=1, mode="constant", cval=0.0)

    per_image = jax.vmap(one_channel, in_axes=2, out_axes=2)
    return jax.vmap(per_image)(images)


def domain_incremental(
    key: jax.Array,
    images,
    labels,
    *,
    num_tasks: int,
    train_per_task: int,
    test_per_task: int,
    transform: str = "rotation",
    max_degrees: float = 180.0,
) -> TaskSequence:
    """The same classes under a new input transformation per task (domain-incremental).

    ``transform="rotation"``: task ``t`` rotates every image by an angle drawn uniformly
    from ``[0, max_degrees]`` (MER's rotated MNIST); ``"permutation"``: task ``t`` applies a
    fixed random pixel permutation (GEM's permuted MNIST). Each task draws its own
    ``train_per_task + test_per_task`` distinct images, so training and test sets are
    disjoint within a task.

    Args:
        key: PRNG key.
        images: ``[examples, H, W, C]``, uint8 (scaled to [0, 1]) or float.
        labels: ``[examples]`` integer labels.
        num_tasks: ``T``.
        train_per_task: training examples per task.
        test_per_task: test examples per task.
        transform: ``"rotation"`` or ``"permutation"``.
        max_degrees: largest rotation angle.

    Returns:
        ``TaskSequence`` with ``train_x [T, train_per_task, H, W, C]``, int32 labels.
    """
    images = _check_images("images", images, 4)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape [{images.shape[0]}] to match images, got {tuple(labels.shape)}.")
    for name, value in (("num_tasks", num_tasks), ("train_per_task", train_per_task), ("test_per_task", test_per_task)):
        check_positive_int(name, value)
    check_choice("transform", transform, ("rotation", "permutation"))
    n = train_per_task + test_per_task
    if n > images.shape[0]:
        raise ValueError(f"train_per_task + test_per_task = {n} exceeds the {images.shape[0]} images.")
    k_pick, k_transform = jax.random.split(key)
    picks = jnp.argsort(jax.random.uniform(k_pick, (num_tasks, images.shape[0])), axis=1)[:, :n]
    x, y = images[picks], labels[picks]  # [T, n, H, W, C], [T, n]
    if transform == "rotation":
        angles = jax.random.uniform(k_transform, (num_tasks,), minval=0.0, maxval=max_degrees)
        x = jax.vmap(rotate)(x, angles)
    else:
        shape = x.shape
        pixels = math.prod(shape[2:])
        perms = jnp.argsort(jax.random.uniform(k_transform, (num_tasks, pixels)), axis=1)
        flat = x.reshape(num_tasks, n, pixels)
        x = jnp.take_along_axis(flat, perms[:, None, :], axis=2).reshape(shape)
    return TaskSequence(x[:, :train_per_task], y[:, :train_per_task], x[:, train_per_task:], y[:, train_per_task:])


def incremental_sine(
    key: jax.Array,
    *,
    num_functions: int = 10,
    train_per_function: int = 32,
    test_per_function: int = 32,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> TaskSequence:
    """OML's incremental sine waves (Javed & White, 2019): one sine function per task.

    Task ``k`` is ``y = A_k sin(x - phi_k)``; its input is ``[x, one_hot(k, num_functions)]``,
    so the learner is told which function it is asked about and forgetting is the only
    obstacle to fitting all of them.

    Returns:
        ``TaskSequence`` with ``train_x [num_functions, train_per_function, 1 + num_functions]``
        and ``train_y [num_functions, train_per_function, 1]`` (test likewise).
    """
    for name, value in (
        ("num_functions", num_functions),
        ("train_per_function", train_per_function),
        ("test_per_function", test_per_function),
    ):
        check_positive_int(name, value)
    for name, value in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
        check_range(name, value)
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_amp, (num_functions, 1, 1), minval=amplitude[0], maxval=amplitude[1])
    ph = jax.random.uniform(k_phase, (num_functions, 1, 1), minval=phase[0], maxval=phase[1])
    x, y = _sine_points(k_x, amp, ph, train_per_function + test_per_function, x_range)
    return TaskSequence(
        x[:, :train_per_function], y[:, :train_per_function], x[:, train_per_function:], y[:, train_per_function:]
    )


def _sine_points(key, amp, ph, n, x_range):
    """Inputs ``[F, n, 1 + F]`` (x and the function's one-hot) and targets ``[F, n, 1]``."""
    f = amp.shape[0]
    x = jax.random.uniform(key, (f, n, 1), minval=x_range[0], maxval=x_range[1])
    one_hot = jnp.broadcast_to(jnp.eye(f, dtype=jnp.float32)[:, None, :], (f, n, f))
    return jnp.concatenate([x, one_hot], axis=-1), amp * jnp.sin(x - ph)


class Schedule(NamedTuple):
    """Which task each step of a lifelong stream serves.

    Attributes:
        task: ``[steps]`` int32, index into the pool (in-distribution tasks ``0..T-1``, then
            out-of-distribution tasks ``T..T+O-1``). New tasks are introduced in index order.
        source: ``[steps]`` int32, :data:`SEEN`, :data:`NEW` or :data:`OOD`: where the current
            segment's task came from (constant between switches).
        switched: ``[steps]`` bool, ``True`` on the first step of each segment (step 0 included).
    """

    task: jax.Array
    source: jax.Array
    switched: jax.Array


@dataclasses.dataclass(frozen=True)
class LifelongStream:
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

    Attributes:
        p_stay: probability of staying on the current task at each step.
        mixture: unnormalised weights ``(seen, new, ood)`` of the kinds drawn on a switch.

    Example:
        >>> s = LifelongStream(p_stay=0.8, mixture=(0.5, 0.5, 0.0)).schedule(jax.random.key(0), 100, num_tasks=5)
        >>> s.task.shape, bool(s.switched[0])
        ((100,), True)
    """

    p_stay: float = 0.9
    mixture: tuple[float, float, float] = (0.5, 0.5, 0.0)

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
        first = lambda v, a: jnp.concatenate([jnp.asarray([v], a.dtype), a])  # noqa: E731
        return Schedule(first(0, task.astype(jnp.int32)), first(NEW, source.astype(jnp.int32)), first(True, switched))


def draw_batch(key: jax.Array, pool: TaskSequence, task: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` training examples of pool task ``task`` (uniform, with replacement): ``(x, y)``."""
    idx = jax.random.randint(key, (batch_size,), 0, pool.train_x.shape[1])
    return pool.train_x[task, idx], pool.train_y[task, idx]


@struct.dataclass
class Trajectories:
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


@dataclasses.dataclass(frozen=True)
class SineTrajectories:
    """OML's meta-training episodes for incremental sine waves.

    A trajectory is ``functions`` fresh random sines, ``shots`` points each, presented one
    function after the other with input ``[x, one_hot(slot)]``; the remember set is
    ``remember`` points of the same functions (Javed & White, 2019, regression setting).

    Example:
        >>> ep = SineTrajectories(functions=10, shots=8, remember=20).sample(jax.random.key(0), 2)
        >>> ep.support_x.shape, ep.query_y.shape
        ((2, 80, 11), (2, 20, 1))
    """

    functions: int = 10
    shots: int = 32
    remember: int = 32
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    kind = "regression"

    def __post_init__(self):
        for name in ("functions", "shots", "remember"):
            check_positive_int(name, getattr(self, name))

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
