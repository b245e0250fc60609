"""The standard few-shot benchmarks, and images of your own, as task distributions."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax

from metajax._checks import check_choice
from metajax.datasets import (
    ImageClasses,
    RaggedImageClasses,
    load_cifar_fs,
    load_cub,
    load_fc100,
    load_miniimagenet,
    load_omniglot,
    load_tiered_imagenet,
)
from metajax.tasks.fewshot import FewShot
from metajax.tasks.ragged import RaggedFewShot


class Benchmark(NamedTuple):
    """Meta-train, meta-validation and meta-test task distributions (``val`` is ``None`` when a split has none)."""

    train: FewShot | RaggedFewShot
    val: FewShot | RaggedFewShot | None
    test: FewShot | RaggedFewShot


BENCHMARK_SPLITS = {
    "omniglot": ("vinyals", "lake"),
    "miniimagenet": ("ravi",),
    "tiered-imagenet": ("ren",),
    "cifar-fs": ("bertinetto",),
    "fc100": ("oreshkin",),
    "cub": ("chen",),
}
"""Benchmark names and their class splits; the first is the default."""
_PARTS = {
    "vinyals": ("vinyals-train", "vinyals-val", "vinyals-test"),
    "lake": ("background", None, "evaluation"),
    **{split: ("train", "val", "test") for split in ("ravi", "ren", "bertinetto", "oreshkin", "chen")},
}
_Loader = Callable[..., ImageClasses | RaggedImageClasses]
_LOADERS: dict[str, tuple[_Loader, int]] = {
    "omniglot": (load_omniglot, 28),
    "miniimagenet": (load_miniimagenet, 84),
    "tiered-imagenet": (load_tiered_imagenet, 84),
    "cifar-fs": (load_cifar_fs, 32),
    "fc100": (load_fc100, 32),
    "cub": (load_cub, 84),
}


def benchmark(
    name: str,
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    split: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    augment_rotations: bool = False,
) -> Benchmark:
    """The standard few-shot benchmarks as train/val/test task distributions (like learn2learn's ``get_tasksets``).

    The defaults are the literature's: 5-way 1-shot episodes (papers report 1 and 5
    shots) with 15 query images per class, at each benchmark's usual image size.

    * ``"omniglot"``, split ``"vinyals"`` (default): 28x28, the Vinyals et al. (2016) split
      with 90-degree rotations as extra classes: 4112 / 688 / 1692 classes of 20 images.
      Split ``"lake"``: ``train`` is Lake's background set (964 classes), ``test`` the
      evaluation set (659), ``val`` is ``None``; no rotations.
    * ``"miniimagenet"``, split ``"ravi"``: 84x84x3, the Ravi & Larochelle (2017) split,
      64 / 16 / 20 classes of 600 images.
    * ``"tiered-imagenet"``, split ``"ren"``: 84x84x3, Ren et al. (2018), 351 / 97 / 160
      classes of unequal sizes (:class:`RaggedFewShot`).
    * ``"cifar-fs"``, split ``"bertinetto"``: 32x32x3, Bertinetto et al. (2019), 64 / 16 /
      20 CIFAR-100 classes of 600 images.
    * ``"fc100"``, split ``"oreshkin"``: 32x32x3, Oreshkin et al. (2018), CIFAR-100 by
      superclass, 60 / 20 / 20 classes of 600 images.
    * ``"cub"``, split ``"chen"``: 84x84x3, CUB-200-2011 with the Chen et al. (2019)
      split, 100 / 50 / 50 classes of unequal sizes (:class:`RaggedFewShot`).

    Args:
        name: one of :data:`BENCHMARK_SPLITS`.
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        root: data folder; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: square image side; ``None`` for the benchmark's usual one (above).
        split: a class split of :data:`BENCHMARK_SPLITS` ``[name]``; ``None`` for the first.
        cache_dir: folder of decoded-array caches; ``None`` for the loaders' default.
        augment_rotations: random 90-degree rotation per class and task, on every split.

    Returns:
        ``Benchmark(train, val, test)`` of :class:`FewShot` (equal class sizes) or
        :class:`RaggedFewShot`, sharing ``ways``, ``shots`` and ``queries``.

    Raises:
        FileNotFoundError: the data is missing (the message says where to get it).
        ValueError: a bad argument.

    Example:
        >>> tasks = benchmark("omniglot", ways=5, shots=1, queries=15)  # doctest: +SKIP
        >>> tasks.train.sample(jax.random.key(0), 32).support_x.shape  # doctest: +SKIP
        (32, 5, 28, 28, 1)
    """

    def make(part: str) -> FewShot | RaggedFewShot:
        data = benchmark_images(name, part, split=split, root=root, image_size=image_size, cache_dir=cache_dir)
        return from_images(data, ways=ways, shots=shots, queries=queries, augment_rotations=augment_rotations)

    val = make("val") if _part_file(name, "val", split) is not None else None
    return Benchmark(make("train"), val, make("test"))


SPLIT_PARTS = ("train", "val", "test")
"""The parts of a benchmark's class split, in :class:`Benchmark`'s order."""


def benchmark_images(
    name: str,
    part: str,
    *,
    split: str | None = None,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ImageClasses | RaggedImageClasses:
    """The images of one part of a benchmark, as host (numpy) arrays: what :func:`benchmark` puts on the device.

    For a :class:`~metajax.tasks.HostEpisodes` pipeline (``HostEpisodes.from_images``),
    which keeps them on the host. Arguments as :func:`benchmark`'s.

    Args:
        name: one of :data:`BENCHMARK_SPLITS`.
        part: ``"train"``, ``"val"`` or ``"test"`` (:data:`SPLIT_PARTS`).

    Returns:
        ``ImageClasses`` ``[classes, examples, H, W, C]`` uint8, or ``RaggedImageClasses``
        ``[total, H, W, C]`` uint8 with counts, for classes of unequal sizes.

    Raises:
        FileNotFoundError: the data is missing (the message says where to get it).
        ValueError: a bad argument, or a part the split does not have.
    """
    file_part = _part_file(name, part, split)
    if file_part is None:
        raise ValueError(f"part={part!r}: split {split or BENCHMARK_SPLITS[name][0]!r} of {name!r} has no such part.")
    load, default_size = _LOADERS[name]
    return load(file_part, root=root, image_size=default_size if image_size is None else image_size,
                cache_dir=cache_dir)  # fmt: skip


def _part_file(name: str, part: str, split: str | None) -> str | None:
    """The loader's name of ``part`` of ``split`` of ``name``, ``None`` if the split has none; checks all three."""
    check_choice("name", name, BENCHMARK_SPLITS)
    split = BENCHMARK_SPLITS[name][0] if split is None else split
    check_choice("split", split, BENCHMARK_SPLITS[name])
    check_choice("part", part, SPLIT_PARTS)
    return _PARTS[split][SPLIT_PARTS.index(part)]


def from_images(
    data: ImageClasses | RaggedImageClasses,
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    augment_rotations: bool = False,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> FewShot | RaggedFewShot:
    """The task distribution of a loaded dataset: :class:`FewShot` when its classes are of one size, else ragged.

    Args:
        data: ``ImageClasses`` (``[classes, examples, H, W, C]``) or ``RaggedImageClasses``
            (``[total, H, W, C]`` with ``counts``), e.g. from
            :func:`metajax.datasets.load_image_folder`.
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        augment_rotations: as in :class:`FewShot`.
        normalize: as in :class:`FewShot`.

    Returns:
        ``FewShot`` over ``[classes, examples, H, W, C]`` when every class holds the same
        number of images, else ``RaggedFewShot`` (which refuses a class of fewer than
        ``shots + queries`` images, by name and count).

    Example:
        >>> import numpy as np
        >>> from metajax.datasets import RaggedImageClasses
        >>> data = RaggedImageClasses(np.zeros((30, 8, 8, 3), np.uint8), np.array([5, 10, 15]), ("a", "b", "c"))
        >>> type(from_images(data, ways=3, shots=1, queries=4)).__name__
        'RaggedFewShot'
    """
    options: dict[str, Any] = dict(
        ways=ways, shots=shots, queries=queries, augment_rotations=augment_rotations, normalize=normalize
    )
    if isinstance(data, ImageClasses):
        # A numpy array: __post_init__ checks it and moves it to the device.
        return FewShot(cast(jax.Array, data.images), **options)
    counts = data.counts
    if len(counts) and counts.min() == counts.max() > 0:
        images = data.images.reshape(len(counts), int(counts[0]), *data.images.shape[1:])
        return FewShot(cast(jax.Array, images), **options)
    return RaggedFewShot(
        cast(jax.Array, data.images),
        cast(jax.Array, data.offsets),
        cast(jax.Array, counts),
        names=data.names,
        **options,
    )
