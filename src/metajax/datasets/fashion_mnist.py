"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) from the four official IDX gzip files.

Files, looked up in ``root`` and ``root/fashion-mnist`` (``root``: the argument, else
``$METAJAX_DATA``, else ``~/.cache/metajax``): ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``
from github.com/zalandoresearch/fashion-mnist (``data/fashion/``). Each is checked against
the official md5. Decoding takes well under a second, so nothing is cached.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from metajax._checks import check_choice
from metajax.datasets._files import ImageClasses, KnownFile, data_root, find_file, verify_file

SPLITS = ("train", "test")
"""Accepted values of ``split``."""
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_SOURCE = "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)"
_FILES = {
    "train": (
        (
            "train-images-idx3-ubyte.gz",
            KnownFile(26421880, "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "official release"),
        ),
        ("train-labels-idx1-ubyte.gz", KnownFile(29515, "md5", "25c81989df183df01b3e8a0aad5dffbe", "official release")),
    ),
    "test": (
        (
            "t10k-images-idx3-ubyte.gz",
            KnownFile(4422102, "md5", "bef4ecab320f06d8554ea6380940ec79", "official release"),
        ),
        ("t10k-labels-idx1-ubyte.gz", KnownFile(5148, "md5", "bb300cfdad3c16e7a12a480ee83cd310", "official release")),
    ),
}


def load_fashion_mnist(split: str = "train", *, root: str | os.PathLike | None = None) -> ImageClasses:
    """Load a Fashion-MNIST split as class-major uint8 images.

    Args:
        split: ``"train"`` (6,000 images per class) or ``"test"`` (1,000 per class).
        root: folder holding the files; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.

    Returns:
        ``ImageClasses``: ``images`` ``[10, per_class, 28, 28, 1]`` uint8 (within a class,
        in file order) and ``names``, the ten class names.

    Raises:
        FileNotFoundError: a file is missing; the message says where to put it and get it.
        ValueError: a bad argument, or a file that does not match the official release.

    Example:
        >>> data = load_fashion_mnist("test")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        (10, 1000, 28, 28, 1)
    """
    check_choice("split", split, SPLITS)
    root = data_root(root)
    folders = [root, root / "fashion-mnist"]
    paths = []
    for name, known in _FILES[split]:
        path = find_file(name, folders)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {name} not found in {folders[0]} or {folders[1]}. Put the official file in "
                f"one of them, or pass root= / set $METAJAX_DATA to the folder holding it; get it from {_SOURCE}."
            )
        verify_file(path, (known,), _SOURCE)
        paths.append(path)
    images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
    counts = np.bincount(labels, minlength=len(CLASSES))
    if len(counts) != len(CLASSES) or len(set(counts.tolist())) != 1:
        raise ValueError(
            f"{paths[1]}: expected the same number of images in each of 10 classes, got counts {counts.tolist()}."
        )
    order = np.argsort(labels, kind="stable")
    grouped = images[order].reshape(len(CLASSES), counts[0], *images.shape[1:], 1)
    return ImageClasses(grouped, CLASSES)


def _read_idx(path: Path, rank: int) -> np.ndarray:
    """The array of an IDX file of ``rank`` dimensions (uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + rank:
        raise ValueError(f"{path} is not an IDX uint8 file of rank {rank} (magic {magic:#x}).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(shape)
