"""Task sequences for continual learning, drawn on the device from PRNG keys with fixed shapes.

A :class:`TaskSequence` holds ``T`` tasks, each with a training and a test set of fixed
size. It is built by :func:`class_incremental` (new Omniglot characters per task),
:func:`domain_incremental` (rotated or permuted images, same labels) and
:func:`incremental_sine` (OML's incremental sine waves, drawn by :class:`~metajax.tasks.Sinusoid`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from metajax._checks import check_choice, check_positive_int, check_range
from metajax.tasks.sinusoid import Sinusoid


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
    obstacle to fitting all of them. The functions and points are those of
    ``Sinusoid(shots=train_per_function, queries=test_per_function, amplitude=amplitude,
    phase=phase, x_range=x_range).sample(key, num_functions)``: ``A_k ~ U[amplitude]``,
    ``phi_k ~ U[phase]`` and every ``x ~ U[x_range]``, drawn independently.

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
    for name, bounds in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
        check_range(name, bounds)
    sine = Sinusoid(
        shots=train_per_function, queries=test_per_function, amplitude=amplitude, phase=phase, x_range=x_range
    )
    ep = sine.sample(key, num_functions)  # function k is task k: [num_functions, points, 1]
    one_hot = jnp.eye(num_functions, dtype=jnp.float32)[:, None, :]

    def inputs(x):
        return jnp.concatenate([x, jnp.broadcast_to(one_hot, (*x.shape[:2], num_functions))], axis=-1)

    return TaskSequence(inputs(ep.support_x), ep.support_y, inputs(ep.query_x), ep.query_y)
