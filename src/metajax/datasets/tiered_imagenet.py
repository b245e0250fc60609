"""tieredImageNet (Ren et al., 2018) from the files its two common distributions hold.

tieredImageNet cannot be downloaded automatically (its images are ImageNet's). Per split,
looked up in ``root/tieredImageNet``, ``root/tiered-imagenet`` and then ``root``
(``root``: the argument, else ``$METAJAX_DATA``, else ``~/.cache/metajax``), in the first
of them holding ``{split}_labels.pkl``:

* ``{split}_labels.pkl``: a pickled dict with the class of each image, ``labels``
  (MetaOptNet's release) or ``label_specific`` (the original), ``[N]`` integers
  ``0 .. classes - 1``, and optionally ``label_specific_str``, the class names (WordNet ids).
* ``{split}_images.npz``: ``images`` ``[N, 84, 84, 3]`` uint8, the release of MetaOptNet
  (Lee et al. 2019, github.com/kjunelee/MetaOptNet), which RFS (Tian et al. 2020),
  FEAT and most recent papers read; the first choice here. Or else
* ``{split}_images_png.pkl``: a pickled list of ``N`` PNG-encoded images, the original
  release (``tiered-imagenet.tar`` of github.com/renmengye/few-shot-ssl-public, which
  learn2learn and torchmeta read); decoded once and cached under ``cache_dir`` (else
  ``$METAJAX_CACHE``, else ``~/.cache/metajax/cache``).

Neither release publishes checksums. Pickles can run code when loaded: only use files
from a source you trust. Splits hold 351 / 97 / 160 classes (34 ImageNet categories split
20 / 6 / 8) of unequal sizes (up to 1,300 images), so a split is a :class:`RaggedImageClasses`; the
training split alone is about 9.5 GB of pixels.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import cast

import numpy as np

from metajax._checks import check_choice, check_positive_int
from metajax.datasets._files import (
    UNREADABLE,
    RaggedImageClasses,
    cache_folder,
    cached,
    damaged,
    data_root,
    decode_image,
    find_file,
    resize_images,
)

SPLITS = ("train", "val", "test")
"""Accepted values of ``split`` (351, 97 and 160 classes)."""

_WHERE = (
    "tieredImageNet (Ren et al. 2018) cannot be downloaded automatically: get {split}_images.npz and "
    "{split}_labels.pkl of MetaOptNet's release (github.com/kjunelee/MetaOptNet, the tieredImageNet link of its "
    "README), or {split}_images_png.pkl and {split}_labels.pkl from the original tiered-imagenet.tar "
    "(github.com/renmengye/few-shot-ssl-public)"
)


def load_tiered_imagenet(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    cache_dir: str | os.PathLike | None = None,
) -> RaggedImageClasses:
    """Load a tieredImageNet split as class-by-class images of unequal counts.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder holding the data; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: side of the square images; other sizes than the files' are resized with
            PIL ``LANCZOS`` and cached.
        cache_dir: folder of the decoded-array cache; ``None`` for ``$METAJAX_CACHE`` or
            ``~/.cache/metajax/cache``.

    Returns:
        ``RaggedImageClasses``: ``images`` ``[total, image_size, image_size, 3]`` uint8, class
        by class in label order (each class's images in file order), ``counts`` ``[classes]``
        and ``names`` (``label_specific_str``, else ``"0"``, ``"1"``, ...).

    Raises:
        FileNotFoundError: a file is missing; the message names the files expected, the
            folders searched and where to get them.
        ValueError: a bad argument, or a file with the wrong content (the message says what
            was expected).

    Example:
        >>> data = load_tiered_imagenet("test")  # doctest: +SKIP
        >>> len(data.counts), data.images.shape[1:]  # doctest: +SKIP
        (160, (84, 84, 3))
    """
    check_choice("split", split, SPLITS)
    check_positive_int("image_size", image_size)
    root = data_root(root)
    folders = [root / "tieredImageNet", root / "tiered-imagenet", root]
    labels_path = find_file(f"{split}_labels.pkl", folders)
    folder = None if labels_path is None else labels_path.parent
    npz = None if folder is None else find_file(f"{split}_images.npz", [folder])
    png = None if folder is None else find_file(f"{split}_images_png.pkl", [folder])
    if labels_path is None or (npz is None and png is None):
        where = ", ".join(map(str, folders)) if folder is None else str(folder)
        raise FileNotFoundError(
            f"tieredImageNet split {split!r} not found in {where}: expected {split}_labels.pkl next to "
            f"{split}_images.npz or {split}_images_png.pkl. {_WHERE.format(split=split)}. Put them in "
            f"{folders[0]}, or pass root= (--data-root of metajax train) / set $METAJAX_DATA."
        )
    labels, names = _read_labels(labels_path, split)
    cache_file = cache_folder(cache_dir, "tiered_imagenet", root) / f"{split}_{image_size}px.npz"
    if npz is not None:
        npz_path = npz

        def resized() -> RaggedImageClasses:
            data = _group(npz_path, _read_npz(npz_path, split), labels, names)
            return data._replace(images=resize_images(data.images, image_size))

        if cache_file.is_file():  # resized before: the arrays, several GB for train, are not read again
            return cached(cache_file, resized)
        data = _group(npz_path, _read_npz(npz_path, split), labels, names)
        if data.images.shape[1:3] == (image_size, image_size):
            return data
        return cached(cache_file, lambda: data._replace(images=resize_images(data.images, image_size)))
    png_path = cast(Path, png)  # found: npz is None here

    return cached(cache_file, lambda: _group(png_path, _decode_png(png_path, split, image_size), labels, names))


def _fresh_copy(path: Path, err: BaseException, split: str) -> str:
    return f"{damaged(path, err)}. Delete it and get a fresh copy: {_WHERE.format(split=split)}."


def _unpickle(path: Path, split: str, **kwargs) -> object:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, **kwargs)
    except UNREADABLE as err:
        raise ValueError(_fresh_copy(path, err, split)) from err


def _read_labels(path: Path, split: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """The class of each image and, when the file has them, the class names."""
    content = _unpickle(path, split, encoding="latin1")
    if not isinstance(content, dict) or not {"labels", "label_specific"} & content.keys():
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} must hold a dict with the key 'labels' or 'label_specific', got {found}.")
    key = "labels" if "labels" in content else "label_specific"
    labels = np.asarray(content[key])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise ValueError(f"{path}: {key!r} must be [N] non-negative integers, got {labels.dtype} {labels.shape}.")
    names = content.get("label_specific_str")
    return labels, None if names is None else tuple(str(n) for n in names)


def _read_npz(path: Path, split: str) -> np.ndarray:
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as content:  # closed even when np.load fails
            files = sorted(content.files)
            images = content["images"] if "images" in files else None
    except UNREADABLE as err:
        raise ValueError(_fresh_copy(path, err, split)) from err
    if images is None:
        raise ValueError(f"{path} must hold the array 'images', got {files}.")
    return images


def _decode_png(path: Path, split: str, image_size: int) -> np.ndarray:
    """``[N, image_size, image_size, 3]`` from a pickled list of PNG byte arrays."""
    content = _unpickle(path, split, encoding="bytes")
    if not isinstance(content, list | tuple | np.ndarray):
        raise ValueError(f"{path} must hold a list of PNG-encoded images, got {type(content).__name__}.")
    return np.stack([decode_image(bytes(np.asarray(png).ravel()), mode="RGB", size=image_size) for png in content])


def _group(path: Path, images: np.ndarray, labels: np.ndarray, names: tuple[str, ...] | None) -> RaggedImageClasses:
    """Rows ``[N, H, W, 3]`` grouped class by class in label order."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: 'images' must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}.")
    if len(images) != len(labels):
        raise ValueError(f"{path} holds {len(images)} images but its labels file {len(labels)} labels.")
    counts = np.bincount(labels, minlength=0 if names is None else len(names)).astype(np.int64)
    if names is None:
        names = tuple(str(label) for label in range(len(counts)))
    if len(names) != len(counts):
        raise ValueError(f"{path}: {len(names)} class names (label_specific_str) for labels 0..{len(counts) - 1}.")
    # Files sorted by class (as released) need no copy of their pixels.
    grouped = images if np.all(labels[:-1] <= labels[1:]) else images[np.argsort(labels, kind="stable")]
    return RaggedImageClasses(grouped, counts, names)
