"""N-way K-shot classification episodes drawn on the device from a class-major image array."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from metajax._checks import check_positive_int
from metajax.episode import Episode


@dataclasses.dataclass(frozen=True, eq=False)
class FewShot:
    """Few-shot classification tasks: ``ways`` classes, ``shots`` support and ``queries`` query images each.

    Every task draws ``ways`` distinct classes and, per class, ``shots + queries``
    distinct images, so support and query sets are disjoint. Labels ``0..ways-1`` go to
    the classes in the uniformly random order they were drawn in (a random permutation),
    so a class has no fixed label. Support and query sets are class-major: label ``l``
    occupies rows ``l * shots ... (l + 1) * shots - 1`` of the support set. All of it is
    done by array operations inside ``jit``; nothing runs in Python per episode.

    ``FewShot`` is a pytree whose one leaf is ``images``: pass it as an argument to a
    jitted function to keep the images a device buffer the program reads. Closing over it
    works too, but then XLA embeds the whole array in the program as a constant (slower to
    compile, memory held twice). Equality and hashing are by identity.

    Attributes:
        images: ``[classes, examples, H, W, C]`` uint8 (0..255), held on the device.
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        augment_rotations: rotate all images of a class in a task by the same random
            multiple of 90 degrees (square images only).
        normalize: ``(mean, std)``, one value per channel, applied after scaling to [0, 1];
            ``None`` leaves pixels in [0, 1].

    Example:
        >>> import jax, numpy as np
        >>> task = FewShot(np.zeros((10, 20, 28, 28, 1), np.uint8), ways=5, shots=1, queries=15)
        >>> ep = task.sample(jax.random.key(0), 4)
        >>> ep.support_x.shape, ep.query_y.shape
        ((4, 5, 28, 28, 1), (4, 75))
    """

    images: jax.Array = dataclasses.field(repr=False)
    _: dataclasses.KW_ONLY
    ways: int
    shots: int
    queries: int
    augment_rotations: bool = False
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    kind = "classification"

    def __post_init__(self):
        images = self.images
        if not hasattr(images, "shape") or images.ndim != 5 or images.dtype != np.uint8:
            described = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
            raise ValueError(f"images must be a uint8 array [classes, examples, H, W, C], got {described}.")
        object.__setattr__(self, "images", jnp.asarray(images))
        check_episode_sizes(self)
        classes, examples, height, width, channels = images.shape
        if self.ways > classes:
            raise ValueError(
                f"ways must be at most the number of classes, {classes} (images {tuple(images.shape)}); "
                f"got ways={self.ways}."
            )
        if self.shots + self.queries > examples:
            raise ValueError(
                f"shots + queries must be at most the {examples} examples per class (images "
                f"{tuple(images.shape)}), so support and query stay disjoint; got shots={self.shots}, "
                f"queries={self.queries}."
            )
        check_image_options(self, height, width, channels)

    @property
    def num_classes(self) -> int:
        """Classes to draw from."""
        return self.images.shape[0]

    def sample(self, key: jax.Array, num_tasks: int) -> Episode:
        """Draw ``num_tasks`` episodes.

        Args:
            key: PRNG key.
            num_tasks: number of tasks (static under ``jit``).

        Returns:
            ``Episode`` with ``support_x`` ``[num_tasks, ways * shots, H, W, C]`` float32,
            ``support_y`` ``[num_tasks, ways * shots]`` int32, ``query_x``
            ``[num_tasks, ways * queries, H, W, C]`` float32 and ``query_y``
            ``[num_tasks, ways * queries]`` int32.
        """
        check_positive_int("num_tasks", num_tasks)
        classes, examples = self.images.shape[:2]
        k_class, k_example, k_turn = jax.random.split(key, 3)
        chosen = draw_classes(k_class, num_tasks, classes, self.ways)
        # top_k of i.i.d. uniforms: distinct indices in uniformly random order.
        _, picks = jax.lax.top_k(
            jax.random.uniform(k_example, (num_tasks, self.ways, examples)), self.shots + self.queries
        )
        return to_episode(self, self.images[chosen[:, :, None], picks], k_turn)


class _EpisodeConfig(Protocol):
    """The episode settings :class:`FewShot` and :class:`~metajax.tasks.RaggedFewShot` share (frozen attributes)."""

    @property
    def ways(self) -> int: ...
    @property
    def shots(self) -> int: ...
    @property
    def queries(self) -> int: ...
    @property
    def augment_rotations(self) -> bool: ...
    @property
    def normalize(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None: ...


def check_episode_sizes(task: _EpisodeConfig) -> None:
    """Raise ``ValueError`` unless ``ways``, ``shots`` and ``queries`` are positive integers."""
    for name in ("ways", "shots", "queries"):
        check_positive_int(name, getattr(task, name))


def check_image_options(task: _EpisodeConfig, height: int, width: int, channels: int) -> None:
    """Check ``augment_rotations`` and ``normalize`` against the image shape; store ``normalize`` as float tuples."""
    if task.augment_rotations and height != width:
        raise ValueError(f"augment_rotations needs square images, got H={height}, W={width}.")
    if task.normalize is not None:
        mean, std = (tuple(float(v) for v in values) for values in task.normalize)
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(
                f"normalize must be (mean, std) with {channels} values each and std > 0, got {task.normalize!r}."
            )
        object.__setattr__(task, "normalize", (mean, std))


def draw_classes(key: jax.Array, num_tasks: int, classes: int, ways: int) -> jax.Array:
    """``[num_tasks, ways]`` int32: distinct classes per task in uniformly random order (label ``l``: column ``l``)."""
    # top_k of i.i.d. uniforms: distinct indices in uniformly random order.
    _, chosen = jax.lax.top_k(jax.random.uniform(key, (num_tasks, classes)), ways)
    return chosen


def to_episode(task: _EpisodeConfig, x: jax.Array, key: jax.Array) -> Episode:
    """The class-major ``Episode`` of drawn images.

    Args:
        task: the episode settings (``shots``, ``augment_rotations``, ``normalize``).
        x: ``[T, ways, shots + queries, H, W, C]`` uint8, row ``l`` of axis 1 the class of label ``l``.
        key: PRNG key of the rotations.

    Returns:
        ``Episode`` of float32 images (scaled to [0, 1], then normalized) and int32 labels:
        support ``[T, ways * shots, ...]``, query ``[T, ways * queries, ...]``.
    """
    num_tasks, ways, per_class, *image_shape = x.shape
    if task.augment_rotations:
        turns = jax.random.randint(key, (num_tasks, ways, 1, 1, 1, 1, 1), 0, 4)
        rotated = jnp.stack([jnp.rot90(x, k, axes=(3, 4)) for k in range(4)], axis=2)
        x = jnp.take_along_axis(rotated, turns, axis=2)[:, :, 0]
    x = x.astype(jnp.float32) / 255.0
    if task.normalize is not None:
        mean, std = (jnp.asarray(v, jnp.float32).reshape((1,) * 5 + (-1,)) for v in task.normalize)
        x = (x - mean) / std

    def split(part: jax.Array) -> tuple[jax.Array, jax.Array]:
        size = part.shape[2]
        labels = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), size)
        return (
            part.reshape(num_tasks, ways * size, *image_shape),
            jnp.broadcast_to(labels, (num_tasks, ways * size)),
        )

    support_x, support_y = split(x[:, :, : task.shots])
    query_x, query_y = split(x[:, :, task.shots :])
    return Episode(support_x, support_y, query_x, query_y)


def register_task_pytree(cls: type, leaves: tuple[str, ...]) -> None:
    """Register a frozen dataclass as a pytree whose leaves are the fields ``leaves``; the rest is static."""
    static = tuple(f.name for f in dataclasses.fields(cls) if f.name not in leaves)

    def flatten(task):
        return tuple(getattr(task, name) for name in leaves), tuple(getattr(task, name) for name in static)

    def unflatten(values: tuple, children: tuple):
        # Rebuilt without __init__: leaves may be tracers or placeholders during transformations.
        task: object = object.__new__(cls)
        for name, value in zip(leaves + static, children + values, strict=True):
            object.__setattr__(task, name, value)
        return task

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)


register_task_pytree(FewShot, ("images",))
