"""N-way K-shot classification episodes drawn on the device from classes of different sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from metajax._checks import check_positive_int
from metajax.episode import Episode
from metajax.tasks.fewshot import (
    _EpisodeConfig,
    check_episode_sizes,
    check_image_options,
    draw_classes,
    register_task_pytree,
    to_episode,
)


@dataclasses.dataclass(frozen=True, eq=False)
class RaggedFewShot:
    """Few-shot classification tasks over classes of unequal size (CUB, tieredImageNet, Meta-Dataset).

    The images of all classes lie in one flat array; class ``c`` owns rows
    ``offsets[c] ... offsets[c] + counts[c] - 1``. Episodes are drawn as by
    :class:`FewShot`, with the same guarantees and layout: ``ways`` distinct classes per
    task, ``shots + queries`` distinct images per class (support and query disjoint),
    labels in the random order the classes were drawn, class-major support and query
    sets, fixed shapes, all inside ``jit``. Every class must hold at least
    ``shots + queries`` images.

    A pytree whose leaves are ``images``, ``offsets`` and ``counts``: pass it as an
    argument to a jitted function. Equality and hashing are by identity.

    Attributes:
        images: ``[total, H, W, C]`` uint8 (0..255), held on the device.
        offsets: ``[classes]`` int32, each class's first row.
        counts: ``[classes]`` int32, each class's number of rows.
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        augment_rotations: as in :class:`FewShot`.
        normalize: as in :class:`FewShot`.
        names: class names (for messages), or ``None``.
        max_count: the largest count (set at construction): the static length of the
            per-class random order ``sample`` draws.

    Example:
        >>> import jax, numpy as np
        >>> classes = [np.zeros((n, 28, 28, 1), np.uint8) for n in (3, 7, 20)]
        >>> task = RaggedFewShot.from_classes(classes, ways=2, shots=1, queries=2)
        >>> ep = task.sample(jax.random.key(0), 4)
        >>> ep.support_x.shape, ep.query_y.shape
        ((4, 2, 28, 28, 1), (4, 4))
    """

    images: jax.Array = dataclasses.field(repr=False)
    offsets: jax.Array = dataclasses.field(repr=False)
    counts: jax.Array = dataclasses.field(repr=False)
    _: dataclasses.KW_ONLY
    ways: int
    shots: int
    queries: int
    augment_rotations: bool = False
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    max_count: int = dataclasses.field(init=False, repr=False)

    kind = "classification"

    def __post_init__(self):
        images = self.images
        if not hasattr(images, "shape") or images.ndim != 4 or images.dtype != np.uint8:
            described = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
            raise ValueError(f"images must be a uint8 array [total, H, W, C], got {described}.")
        check_episode_sizes(self)
        offsets, counts, names = check_classes(self, self.offsets, self.counts, len(images), self.names)
        object.__setattr__(self, "names", names)
        _, height, width, channels = images.shape
        check_image_options(self, height, width, channels)
        object.__setattr__(self, "images", jnp.asarray(images))
        object.__setattr__(self, "offsets", jnp.asarray(offsets, jnp.int32))
        object.__setattr__(self, "counts", jnp.asarray(counts, jnp.int32))
        object.__setattr__(self, "max_count", int(counts.max()))

    @classmethod
    def from_classes(
        cls, classes: Sequence[np.ndarray], *, names: Sequence[str] | None = None, **kwargs
    ) -> RaggedFewShot:
        """Build from one array per class.

        Args:
            classes: per class, ``[n_c, H, W, C]`` uint8, all with the same ``H, W, C``.
            names: class names, or ``None``.
            **kwargs: ``ways``, ``shots``, ``queries`` and the other keyword attributes.

        Returns:
            A ``RaggedFewShot`` over the classes' images concatenated in order.
        """
        arrays = [np.asarray(images) for images in classes]
        if not arrays:
            raise ValueError("classes must hold at least one array [n, H, W, C], got none.")
        for c, images in enumerate(arrays):
            if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1:] != arrays[0].shape[1:]:
                raise ValueError(
                    f"classes[{c}] must be a uint8 array [n, H, W, C] with H, W, C = {arrays[0].shape[1:]} "
                    f"(those of classes[0]), got {images.dtype} {images.shape}."
                )
        counts = np.array([len(images) for images in arrays])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # Numpy arrays: __post_init__ checks them and moves them to the device.
        return cls(
            cast(jax.Array, np.concatenate(arrays)),
            cast(jax.Array, offsets),
            cast(jax.Array, counts),
            names=None if names is None else tuple(names),
            **kwargs,
        )

    @property
    def num_classes(self) -> int:
        """Classes to draw from."""
        return self.offsets.shape[0]

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
        k_class, k_example, k_turn = jax.random.split(key, 3)
        chosen = draw_classes(k_class, num_tasks, self.num_classes, self.ways)
        # A random order of each class's rows with fixed shapes: noise over max_count
        # positions, -1 past the class's count, so top_k (count >= shots + queries) takes
        # distinct positions inside the class, in uniformly random order.
        noise = jax.random.uniform(k_example, (num_tasks, self.ways, self.max_count))
        inside = jnp.arange(self.max_count)[None, None, :] < self.counts[chosen][:, :, None]
        _, picks = jax.lax.top_k(jnp.where(inside, noise, -1.0), self.shots + self.queries)
        rows = self.offsets[chosen][:, :, None] + picks  # [T, ways, shots + queries]
        return to_episode(self, self.images[rows], k_turn)


def check_classes(
    task: _EpisodeConfig, offsets, counts, total: int, names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Check a flat image array's classes against ``task``'s episode sizes.

    Args:
        task: the episode settings (``ways``, ``shots``, ``queries``).
        offsets: ``[classes]`` each class's first row.
        counts: ``[classes]`` each class's number of rows.
        total: rows in the image array.
        names: class names (for messages), or ``None``.

    Returns:
        ``(offsets, counts, names)`` as int64 arrays and a tuple of strings (or ``None``).

    Raises:
        ValueError: ranges outside ``[0, total)`` or overlapping, a class with fewer than
            ``shots + queries`` images (named, with its count), or more ways than classes.
    """
    offsets, counts = _index_array("offsets", offsets), _index_array("counts", counts)
    if offsets.shape != counts.shape or offsets.size == 0:
        raise ValueError(
            f"offsets and counts must be 1-D with one entry per class (at least one), got shapes "
            f"{offsets.shape} and {counts.shape}."
        )
    classes = offsets.size
    if names is not None:
        names = tuple(str(name) for name in names)
        if len(names) != classes:
            raise ValueError(f"names must hold one name per class, {classes}; got {len(names)} names.")
    _check_ranges(offsets, counts, total, names)
    small = np.flatnonzero(counts < task.shots + task.queries)
    if small.size:
        listed = ", ".join(f"{_label(c, names)} has {counts[c]}" for c in small[:5])
        more = f" and {small.size - 5} more" if small.size > 5 else ""
        raise ValueError(
            f"every class needs at least shots + queries = {task.shots + task.queries} images, so support "
            f"and query stay disjoint; {listed}{more}. Drop those classes or lower shots or queries."
        )
    if task.ways > classes:
        raise ValueError(f"ways must be at most the number of classes, {classes}; got ways={task.ways}.")
    return offsets, counts, None if names is None else tuple(names)


def _index_array(name: str, value) -> np.ndarray:
    """``value`` as a 1-D int64 numpy array, or a ``ValueError`` naming ``name``."""
    array = np.asarray(value)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, one entry per class; got {array.dtype} {array.shape}.")
    return array.astype(np.int64)


def _check_ranges(offsets: np.ndarray, counts: np.ndarray, total: int, names: tuple[str, ...] | None) -> None:
    """Raise ``ValueError`` unless the classes' row ranges lie inside ``[0, total)`` and do not overlap."""
    for c in range(len(offsets)):
        if offsets[c] < 0 or counts[c] < 0 or offsets[c] + counts[c] > total:
            raise ValueError(
                f"offsets and counts must give row ranges inside the {total} images; {_label(c, names)} has "
                f"offsets[{c}]={offsets[c]}, counts[{c}]={counts[c]} (rows {offsets[c]}..{offsets[c] + counts[c] - 1})."
            )
    order = np.argsort(offsets, kind="stable")
    for a, b in zip(order[:-1], order[1:], strict=True):
        if offsets[a] + counts[a] > offsets[b]:
            rows_a, rows_b = (f"rows {offsets[c]}..{offsets[c] + counts[c] - 1}" for c in (a, b))
            raise ValueError(
                f"offsets and counts must give disjoint row ranges; {_label(a, names)} ({rows_a}) overlaps "
                f"{_label(b, names)} ({rows_b})."
            )


def _label(c: int, names: tuple[str, ...] | None) -> str:
    """``class 3`` or, with names, ``class 3 ('Cardinal')``."""
    return f"class {c} ({names[c]!r})" if names is not None else f"class {c}"


register_task_pytree(RaggedFewShot, ("images", "offsets", "counts"))
