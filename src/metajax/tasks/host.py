"""N-way K-shot episodes drawn on CPU workers (Grain) from images kept on the host, for data larger than the device.

:class:`HostEpisodes` is an :class:`~metajax.tasks.base.EpisodeFeed`: Grain draws each
episode's classes and images with numpy on worker threads, batches ``tasks_per_step``
episodes and prefetches the uint8 batches to the device; inside the jitted meta-step
:func:`~metajax.tasks.fewshot.to_episode` scales, rotates and normalizes them exactly as
:class:`~metajax.tasks.FewShot` does. Episode ``i`` is a function of ``(seed, i)`` only,
so the stream is the same for any number of workers, and its position (Grain's iterator
state) is saved in checkpoints. Needs the ``grain`` extra (``pip install 'metajax[grain]'``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from metajax._checks import check_choice, check_positive_int
from metajax.datasets._files import ImageClasses, RaggedImageClasses, decode_image
from metajax.episode import Episode
from metajax.tasks.fewshot import check_episode_sizes, check_image_options, to_episode
from metajax.tasks.ragged import check_classes

# Episodes in the stream: endless in practice (Grain's MapDataset needs a length).
_ENDLESS = 2**62


def require_grain():
    """The ``grain`` module, or an ``ImportError`` saying which extra installs it."""
    try:
        import grain
    except ImportError as error:
        raise ImportError(
            "metajax.tasks.HostEpisodes needs the grain package, which is not installed; "
            "install it with pip install 'metajax[grain]' (or pip install grain)."
        ) from error
    return grain


@dataclasses.dataclass(frozen=True)
class EpisodeLayout:
    """The episode settings of a fed batch, hashable: ``layout(x, key)`` is :func:`~metajax.tasks.fewshot.to_episode`.

    Attributes:
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        augment_rotations: as in :class:`~metajax.tasks.FewShot`.
        normalize: as in :class:`~metajax.tasks.FewShot`.
    """

    ways: int
    shots: int
    queries: int
    augment_rotations: bool = False
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __call__(self, x: jax.Array, key: jax.Array) -> Episode:
        """``x`` ``[T, ways, shots + queries, H, W, C]`` uint8 as the batched float32 ``Episode`` (``to_episode``)."""
        return to_episode(self, x, key)


class ImageFiles:
    """Image files decoded when indexed: ``files[rows]`` is ``[len(rows), size, size, C]`` uint8.

    For :class:`HostEpisodes` over datasets that are not held decoded in memory: each
    episode decodes only the files it draws, on the pipeline's workers.

    Args:
        paths: one path per image, in the row order the offsets and counts refer to.
        size: side of the square images (resized with ``LANCZOS``, as the dataset loaders do).
        mode: ``"L"`` (grayscale, C = 1) or ``"RGB"`` (C = 3).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: Sequence[str | os.PathLike], *, size: int, mode: str = "L"):
        check_positive_int("size", size)
        check_choice("mode", mode, ("L", "RGB"))
        self.paths = tuple(Path(p) for p in paths)
        self.size, self.mode = size, mode
        self.shape = (len(self.paths), size, size, 1 if mode == "L" else 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), size, size, C]`` uint8: the files at ``rows``, decoded."""
        decoded = [decode_image(self.paths[r].read_bytes(), mode=self.mode, size=self.size) for r in rows]
        return np.stack(decoded).reshape(len(decoded), *self.shape[1:])


class HostEpisodes:
    """Few-shot episodes drawn by Grain on CPU workers from images on the host, prefetched to the device.

    The same episodes as :class:`~metajax.tasks.FewShot` and
    :class:`~metajax.tasks.RaggedFewShot` (``ways`` distinct classes in random order, so
    labels are permuted; ``shots + queries`` distinct images per class, so support and
    query are disjoint; class-major; fixed shapes), but the images never sit on the device
    as a whole: only each meta-step's ``[tasks_per_step, ways, shots + queries, H, W, C]``
    uint8 batch is moved there. Pass it to :func:`~metajax.train` in place of a task
    distribution; with a checkpointer, its position is saved in every checkpoint.

    Episode ``i`` is drawn from ``numpy.random.default_rng((seed, i))`` alone, so the
    stream depends on ``seed`` and ``tasks_per_step`` only, not on ``workers``.

    Args:
        images: ``[classes, examples, H, W, C]`` uint8 (equal class sizes), or
            ``[total, H, W, C]`` uint8 with ``offsets`` and ``counts`` (classes of any
            size). Any array indexed by a row array works: a numpy array, a memory map
            (``np.load(path, mmap_mode="r")``) or :class:`ImageFiles`.
        offsets: with flat images, ``[classes]`` each class's first row.
        counts: with flat images, ``[classes]`` each class's number of rows.
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        tasks_per_step: episodes per batch (the trainer's ``meta_batch``).
        seed: the stream's seed, an integer >= 0.
        workers: Grain reader threads that draw and decode episodes (0: the consuming thread).
        prefetch: batches buffered on the host and on the device, each.
        augment_rotations: as in :class:`~metajax.tasks.FewShot` (drawn inside the step).
        normalize: as in :class:`~metajax.tasks.FewShot`.
        names: class names (for messages), or ``None``.
        device: where batches go (``jax.device_put``'s argument): a device, ``None`` for the
            default one, or a sharding, e.g. ``NamedSharding(mesh, P("tasks"))`` to split each
            batch's tasks over the devices of ``train(..., mesh=mesh)``. With several
            processes every one draws the whole batch (the same, for the same seed) and
            places its own devices' share.

    Raises:
        ImportError: grain is not installed (the message names the extra).
        ValueError: a bad argument, a class with fewer than ``shots + queries`` images.

    Example:
        >>> import numpy as np
        >>> feed = HostEpisodes(np.zeros((10, 20, 28, 28, 1), np.uint8), ways=5, shots=1, queries=15,
        ...                     tasks_per_step=4, seed=0)
        >>> next(feed).shape, feed.position
        ((4, 5, 16, 28, 28, 1), 1)
        >>> feed.close()
    """

    kind = "classification"

    def __init__(
        self,
        images: Any,
        offsets: Any = None,
        counts: Any = None,
        *,
        ways: int,
        shots: int,
        queries: int,
        tasks_per_step: int,
        seed: int,
        workers: int = 2,
        prefetch: int = 2,
        augment_rotations: bool = False,
        normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        names: Sequence[str] | None = None,
        device: Any = None,
    ):
        grain = require_grain()
        self.ways, self.shots, self.queries = ways, shots, queries
        self.augment_rotations, self.normalize = augment_rotations, normalize
        check_episode_sizes(self)
        check_positive_int("tasks_per_step", tasks_per_step)
        check_positive_int("workers", workers, allow_zero=True)
        check_positive_int("prefetch", prefetch)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
        self.tasks_per_step, self.seed, self.workers = tasks_per_step, int(seed), workers
        images = _flat_images(images, offsets, counts)
        if offsets is None:
            classes, examples = images.shape[:2]
            offsets, counts = np.arange(classes) * examples, np.full(classes, examples)
            images = images.reshape(classes * examples, *images.shape[2:])
        self._offsets, self._counts, self.names = check_classes(self, offsets, counts, len(images), names)
        self.image_shape = tuple(images.shape[1:])
        check_image_options(self, *self.image_shape)
        self._images = images
        self.assemble = EpisodeLayout(ways, shots, queries, augment_rotations, self.normalize)
        self._batches = grain.MapDataset.range(_ENDLESS).map(self.draw).batch(tasks_per_step, drop_remainder=True)
        read = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(prefetch, workers))
        stream = grain.experimental.device_put(
            self._batches.to_iter_dataset(read),
            jax.devices()[0] if device is None else device,
            cpu_buffer_size=prefetch,
            device_buffer_size=prefetch,
        )
        self._iterator = iter(stream)
        self._position = 0

    @classmethod
    def from_images(cls, data: ImageClasses | RaggedImageClasses, **options: Any) -> HostEpisodes:
        """The episodes of a loaded dataset, kept on the host (``tasks.from_images`` puts them on the device).

        Args:
            data: ``ImageClasses`` (``[classes, examples, H, W, C]``) or
                ``RaggedImageClasses`` (``[total, H, W, C]`` with ``counts``), e.g. from
                :func:`metajax.tasks.benchmark_images` or
                :func:`metajax.datasets.load_image_folder`.
            **options: the keyword arguments of :class:`HostEpisodes` (``ways``, ``shots``,
                ``queries``, ``tasks_per_step``, ``seed``, ...); the class names come from ``data``.
        """
        if isinstance(data, ImageClasses):
            return cls(data.images, names=data.names, **options)
        return cls(data.images, data.offsets, data.counts, names=data.names, **options)

    @property
    def num_classes(self) -> int:
        """Classes to draw from."""
        return len(self._offsets)

    @property
    def position(self) -> int:
        """Batches served so far (meta-steps fed)."""
        return self._position

    def draw(self, index: int) -> np.ndarray:
        """Episode ``index``: ``[ways, shots + queries, H, W, C]`` uint8, row ``l`` the class of label ``l``."""
        rng = np.random.default_rng((self.seed, int(index)))
        # Generator.choice without replacement: distinct values in uniformly random order.
        chosen = rng.choice(self.num_classes, self.ways, replace=False)
        per_class = self.shots + self.queries
        picks = np.stack([rng.choice(self._counts[c], per_class, replace=False) for c in chosen])
        rows = (self._offsets[chosen][:, None] + picks).reshape(-1)
        return np.asarray(self._images[rows]).reshape(self.ways, per_class, *self.image_shape)

    def example(self) -> np.ndarray:
        """The stream's first batch ``[tasks_per_step, ways, shots + queries, H, W, C]``, drawn without advancing it."""
        return self._batches[0]

    def __iter__(self) -> HostEpisodes:
        return self

    def __next__(self) -> jax.Array:
        """The next batch ``[tasks_per_step, ways, shots + queries, H, W, C]`` uint8, on the device."""
        batch = next(self._iterator)
        self._position += 1
        return batch

    def _config(self) -> dict:
        return {"seed": self.seed, "tasks_per_step": self.tasks_per_step, "ways": self.ways, "shots": self.shots,
                "queries": self.queries, "classes": self.num_classes}  # fmt: skip

    def get_state(self) -> dict:
        """The stream's position: batches served, Grain's iterator state and the settings that define the stream."""
        return {"position": self._position, "grain": self._iterator.get_state(), "config": self._config()}

    def set_state(self, state: dict) -> None:
        """Continue from a position :meth:`get_state` returned (say, from a checkpoint).

        Raises:
            ValueError: ``state`` is not such a position, or one of a stream with other settings.
        """
        if not isinstance(state, dict) or not {"position", "grain", "config"} <= state.keys():
            raise ValueError(
                f"state must be a HostEpisodes.get_state() dict with position, grain and config, got {state!r}."
            )
        if state["config"] != self._config():
            raise ValueError(
                f"state is the position of another episode stream: it was saved with {state['config']}, "
                f"this one has {self._config()}."
            )
        self._iterator.set_state(state["grain"])
        self._position = int(state["position"])

    def close(self) -> None:
        """Stop the prefetching threads."""
        self._iterator.close()

    def __enter__(self) -> HostEpisodes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _flat_images(images: Any, offsets: Any, counts: Any) -> Any:
    """Check ``images`` (5-D class-major without ``offsets``/``counts``, 4-D with both); return it."""
    if not all(hasattr(images, a) for a in ("shape", "dtype", "ndim")) or images.dtype != np.uint8:
        described = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise ValueError(
            f"images must be a uint8 array [classes, examples, H, W, C] or [total, H, W, C], got {described}."
        )
    if (offsets is None) != (counts is None):
        raise ValueError("offsets and counts go together (flat images [total, H, W, C]); got only one of them.")
    expected = 5 if offsets is None else 4
    if images.ndim != expected:
        layout = "[classes, examples, H, W, C] without" if expected == 5 else "[total, H, W, C] with"
        raise ValueError(f"images must be {layout} offsets and counts, got shape {tuple(images.shape)}.")
    return images
