"""CIFAR-FS (Bertinetto et al., 2019) and FC100 (Oreshkin et al., 2018): few-shot class splits of CIFAR-100.

Both read the official CIFAR-100 python release (Krizhevsky, 2009), looked up in ``root``
and ``root/cifar100`` (``root``: the argument, else ``$METAJAX_DATA``, else
``~/.cache/metajax``):

* the extracted folder ``cifar-100-python/`` with the pickles ``train``, ``test`` and
  ``meta``, each checked against its md5 (the digests torchvision publishes), or else
* the archive ``cifar-100-python.tar.gz``, checked against its official md5 and read
  without extracting it; downloaded from https://www.cs.toronto.edu/~kriz/ into
  ``root/cifar100`` when missing.

A few-shot class keeps all 600 of its images: CIFAR-100's 500 training images, then its
100 test images, each in file order. Only verified files are unpickled. Images are
32x32; other sizes are resized with PIL ``LANCZOS`` and cached under ``cache_dir``
(else ``$METAJAX_CACHE``, else ``~/.cache/metajax/cache``).
"""

from __future__ import annotations

import functools
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.datasets._files import (
    UNREADABLE,
    ImageClasses,
    KnownFile,
    cache_folder,
    cached,
    damaged,
    data_root,
    find_file,
    obtain,
    resize_images,
    verify_file,
)

SPLITS = ("train", "val", "test")
"""Accepted values of ``split``."""

# The R2D2 split (Bertinetto et al. 2019), the class lists of github.com/bertinetto/r2d2
# (data/cifar-fs/splits/bertinetto/{train,val,test}.txt): 64 / 16 / 20 fine classes.
CIFAR_FS_CLASSES = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin", "elephant",
        "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster",
        "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
        "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip", "turtle",
        "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
        "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy",
        "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
    ),
}  # fmt: skip
"""CIFAR-FS: the fine classes of each split."""

# TADAM (Oreshkin et al. 2018), section 4: superclasses 1-6, 9, 10, 15, 17-19 for training,
# 8, 11, 13, 16 for validation, 0, 7, 12, 14 for test (CIFAR-100's coarse label indices).
FC100_SUPERCLASSES = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
        "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip
"""FC100: the superclasses of each split (5 fine classes each: 60 / 20 / 20 classes)."""

_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_FOLDER = "cifar-100-python"
_ARCHIVE = "cifar-100-python.tar.gz"
_PARTS = ("train", "test", "meta")  # the pickles in the folder and the archive
# Sizes are not published; the md5s are the official archive's and torchvision's for its members.
_KNOWN = {
    _ARCHIVE: (KnownFile(None, "md5", "eb9058c3a382ffc7106e4002c42a8d85", "official release"),),
    "train": (KnownFile(None, "md5", "16019d7e3df5f24257cddd939b257f8d", "official release"),),
    "test": (KnownFile(None, "md5", "f0ef6b0ae62326f3e7ffdfab6717acfc", "official release"),),
    "meta": (KnownFile(None, "md5", "7973b15100ade9c7d40fb424638fde48", "official release"),),
}


class _Cifar100(NamedTuple):
    """All 60,000 images (training rows, then test rows) with their labels and the label names."""

    images: np.ndarray  # [60000, 32, 32, 3] uint8
    fine: np.ndarray  # [60000] fine label of each row
    coarse: np.ndarray  # [60000] coarse label of each row
    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]


def load_cifar_fs(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 60.0,
) -> ImageClasses:
    """Load a CIFAR-FS split (Bertinetto et al. 2019's class split of CIFAR-100) as class-major images.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (64, 16 and 20 classes of :data:`CIFAR_FS_CLASSES`).
        root: folder holding the data; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: side of the square images; 32 is CIFAR's own, others are resized and cached.
        cache_dir: folder of the resized-array cache; ``None`` for ``$METAJAX_CACHE`` or
            ``~/.cache/metajax/cache``.
        download: fetch a missing ``cifar-100-python.tar.gz`` from the official site.
        timeout: seconds to wait on the network before giving up a download.

    Returns:
        ``ImageClasses``: ``images`` ``[classes, 600, image_size, image_size, 3]`` uint8, the
        classes in CIFAR-100's label order (alphabetical), and their fine class names.

    Raises:
        FileNotFoundError: CIFAR-100 is missing (and was not downloaded); the message says
            where to put it and where to get it.
        ValueError: a bad argument, or a file that matches no official release.

    Example:
        >>> data = load_cifar_fs("test")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        (20, 600, 32, 32, 3)
    """
    check_choice("split", split, SPLITS)

    def classes(data: _Cifar100) -> list[str]:
        return list(CIFAR_FS_CLASSES[split])

    return _load(f"cifar-fs-{split}", classes, root, image_size, cache_dir, download, timeout)


def load_fc100(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 60.0,
) -> ImageClasses:
    """Load an FC100 split (Oreshkin et al. 2018: CIFAR-100 split by superclass) as class-major images.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``: the fine classes of 12, 4 and 4
            superclasses (:data:`FC100_SUPERCLASSES`), 60, 20 and 20 classes.
        root: folder holding the data; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: side of the square images; 32 is CIFAR's own, others are resized and cached.
        cache_dir: folder of the resized-array cache; ``None`` for ``$METAJAX_CACHE`` or
            ``~/.cache/metajax/cache``.
        download: fetch a missing ``cifar-100-python.tar.gz`` from the official site.
        timeout: seconds to wait on the network before giving up a download.

    Returns:
        ``ImageClasses``: ``images`` ``[classes, 600, image_size, image_size, 3]`` uint8, the
        classes in CIFAR-100's label order, and their fine class names.

    Raises:
        FileNotFoundError: CIFAR-100 is missing (and was not downloaded).
        ValueError: a bad argument, or a file that matches no official release.

    Example:
        >>> data = load_fc100("train")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        (60, 600, 32, 32, 3)
    """
    check_choice("split", split, SPLITS)

    def classes(data: _Cifar100) -> list[str]:
        superclasses = FC100_SUPERCLASSES[split]
        unknown = [name for name in superclasses if name not in data.coarse_names]
        if unknown:
            raise ValueError(
                f"CIFAR-100's coarse_label_names lack FC100's superclasses {unknown}; got {data.coarse_names}."
            )
        inside = np.isin(data.coarse, [data.coarse_names.index(name) for name in superclasses])
        return [data.fine_names[label] for label in np.unique(data.fine[inside])]

    return _load(f"fc100-{split}", classes, root, image_size, cache_dir, download, timeout)


def _load(
    name: str,
    classes: Callable[[_Cifar100], list[str]],
    root: str | os.PathLike | None,
    image_size: int,
    cache_dir: str | os.PathLike | None,
    download: bool,
    timeout: float,
) -> ImageClasses:
    """The ``classes`` of CIFAR-100 at ``image_size`` (resized ones cached as ``name``)."""
    check_positive_int("image_size", image_size)
    check_positive("timeout", timeout)
    folder = data_root(root)

    def build() -> ImageClasses:
        data = _read(folder, download, timeout)
        return _select(data, classes(data))

    if image_size == 32:
        return build()

    def resized() -> ImageClasses:
        data = build()
        return ImageClasses(resize_images(data.images, image_size), data.names)

    return cached(cache_folder(cache_dir, "cifar100", folder) / f"{name}_{image_size}px.npz", resized)


def _select(data: _Cifar100, names: list[str]) -> ImageClasses:
    """``[classes, 600, 32, 32, 3]``: every row of each named fine class, in label order."""
    unknown = [name for name in names if name not in data.fine_names]
    if unknown or not names:
        raise ValueError(
            f"CIFAR-100's fine_label_names lack the split's classes {unknown or names}; got "
            f"{len(data.fine_names)} names. Is this the official CIFAR-100 (not CIFAR-10)?"
        )
    labels = sorted(data.fine_names.index(name) for name in names)
    rows = [np.flatnonzero(data.fine == label) for label in labels]
    if len({len(r) for r in rows}) != 1:
        short = min(range(len(rows)), key=lambda i: len(rows[i]))
        raise ValueError(
            f"CIFAR-100 classes must hold equally many images (600 in the release): class "
            f"{data.fine_names[labels[short]]!r} holds {len(rows[short])}, others up to {max(map(len, rows))}."
        )
    return ImageClasses(np.stack([data.images[r] for r in rows]), tuple(data.fine_names[label] for label in labels))


def _read(root: Path, download: bool, timeout: float) -> _Cifar100:
    """CIFAR-100 from the extracted folder, else from the archive (downloaded if missing); see :func:`_decode`."""
    folders = [root, root / "cifar100"]
    meta = find_file(f"{_FOLDER}/meta", folders)
    if meta is not None:
        files = tuple(meta.parent / part for part in _PARTS)
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(
                    f"CIFAR-100 file {path} not found next to {meta}. Extract the whole of {_ARCHIVE} "
                    f"(from {_URL}) in {meta.parent.parent}."
                )
    else:
        missing = (
            f"CIFAR-100 not found in {folders[0]} or {folders[1]}: expected the folder {_FOLDER}/ (with train, test "
            f"and meta) or the archive {_ARCHIVE}, the python version of CIFAR-100 (Krizhevsky 2009). Get {_ARCHIVE} "
            f"from {_URL} and put it (or its extracted folder) in {folders[1]}, or point to the folder holding it "
            f"with root= (--data-root of metajax train) or $METAJAX_DATA."
        )
        archive = find_file(_ARCHIVE, folders)
        if archive is None:  # downloaded into root/cifar100
            archive = obtain(_ARCHIVE, folders, _KNOWN[_ARCHIVE], _URL, download=download, timeout=timeout,
                             missing=missing)  # fmt: skip
        files = (archive,)
    return _decode(tuple((str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size) for path in files))


@functools.lru_cache(maxsize=1)
def _decode(files: tuple[tuple[str, int, int], ...]) -> _Cifar100:
    """The verified CIFAR-100 ``files`` (``(resolved path, mtime_ns, size)``: the three pickles, or the archive).

    The arrays of the last files read stay in memory (about 180 MB, read-only), so the
    splits of one benchmark read them once; a file changed since (another mtime or size)
    is read again.
    """
    paths = [Path(path) for path, _, _ in files]
    for path in paths:
        verify_file(path, _KNOWN[path.name], _URL)
    if paths[0].name != _ARCHIVE:
        raw = {part: _unpickle(path, path.read_bytes(), part) for part, path in zip(_PARTS, paths, strict=True)}
    else:
        archive = paths[0]
        try:
            with tarfile.open(archive, "r:gz") as tar:
                raw = {part: _member(tar, archive, part) for part in _PARTS}
        except (tarfile.TarError, *UNREADABLE) as err:
            raise ValueError(f"{damaged(archive, err)}. Delete it and get a fresh copy from {_URL}.") from err
    parts = [raw["train"], raw["test"]]
    images = np.concatenate([np.asarray(p["data"], np.uint8).reshape(-1, 3, 32, 32) for p in parts])
    data = _Cifar100(
        images.transpose(0, 2, 3, 1),
        np.concatenate([np.asarray(p["fine_labels"]) for p in parts]),
        np.concatenate([np.asarray(p["coarse_labels"]) for p in parts]),
        tuple(str(n) for n in raw["meta"]["fine_label_names"]),
        tuple(str(n) for n in raw["meta"]["coarse_label_names"]),
    )
    for array in data[:3]:  # shared by every caller
        array.flags.writeable = False
    return data


def _member(tar: tarfile.TarFile, archive: Path, part: str) -> dict:
    """The unpickled member ``cifar-100-python/<part>`` of the archive."""
    try:
        f = tar.extractfile(f"{_FOLDER}/{part}")
    except KeyError:
        f = None
    if f is None:
        raise ValueError(f"{archive} holds no file {_FOLDER}/{part}; is it the python version of CIFAR-100?")
    with f:
        return _unpickle(archive, f.read(), part)


_IMAGE_KEYS = ("data", "fine_labels", "coarse_labels")
_KEYS = {"train": _IMAGE_KEYS, "test": _IMAGE_KEYS, "meta": ("fine_label_names", "coarse_label_names")}


def _unpickle(path: Path, raw: bytes, part: str) -> dict:
    """The dict of CIFAR-100's pickle ``part`` (``path`` names it in messages)."""
    try:
        content = pickle.loads(raw, encoding="latin1")
    except UNREADABLE as err:
        raise ValueError(f"{damaged(path, err)}. Delete it and get a fresh copy from {_URL}.") from err
    keys = _KEYS[part]
    if not isinstance(content, dict) or not set(keys) <= content.keys():
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} ({part}) must hold a CIFAR-100 dict with keys {', '.join(keys)}; got {found}.")
    return content
