"""miniImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) class split, from local files.

miniImageNet cannot be downloaded automatically (its images are ImageNet's). One of these
per split, looked up in ``root/miniimagenet`` and then ``root`` (``root``: the argument,
else ``$METAJAX_DATA``, else ``~/.cache/metajax``):

* ``mini-imagenet-cache-{split}.pkl``: a pickled dict with ``image_data`` ``[N, 84, 84, 3]``
  uint8 and ``class_dict`` (class name -> list of row indices), the form distributed by
  learn2learn's ``MiniImagenet`` and the few-shot-ssl / torchmeta mirrors. Pickles can run
  code when loaded: only use files from a source you trust.
* ``mini-imagenet-cache-{split}.npz``: the same content without pickle, ``image_data``
  ``[N, H, W, 3]`` uint8 and ``labels`` ``[N]`` (class name or id of each row).
* ``images/`` and ``{split}.csv``: the Ravi split files (columns ``filename,label``, from
  github.com/twitter/meta-learning-lstm ``data/miniImagenet/``) next to a folder of the
  images they name (e.g. made by github.com/yaoyao-liu/mini-imagenet-tools). They are
  decoded once and cached as a compressed ``.npz`` under ``cache_dir`` (else
  ``$METAJAX_CACHE``, else ``~/.cache/metajax/cache``).
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np

from metajax._checks import check_choice, check_positive_int
from metajax.datasets._files import (
    UNREADABLE,
    ImageClasses,
    cache_folder,
    cached,
    damaged,
    data_root,
    decode_image,
    find_file,
    resize_images,
)

SPLITS = ("train", "val", "test")
"""Accepted values of ``split`` (64, 16 and 20 classes of 600 images in the Ravi split)."""

_WHERE = (
    "miniImageNet (Ravi & Larochelle 2017 split) cannot be downloaded automatically: get the "
    "mini-imagenet-cache-{split}.pkl files of learn2learn's MiniImagenet (or the torchmeta / few-shot-ssl "
    "mirrors), or the split CSVs of github.com/twitter/meta-learning-lstm (data/miniImagenet/) with the "
    "84x84 images they name in images/ (e.g. from github.com/yaoyao-liu/mini-imagenet-tools)"
)


def load_miniimagenet(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    cache_dir: str | os.PathLike | None = None,
) -> ImageClasses:
    """Load one split of miniImageNet as class-major uint8 images.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder holding the data; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: side of the square images; other sizes are resized with PIL ``LANCZOS``
            and cached.
        cache_dir: folder of the decoded-array cache; ``None`` for ``$METAJAX_CACHE`` or
            ``~/.cache/metajax/cache``.

    Returns:
        ``ImageClasses``: ``images`` ``[classes, examples, image_size, image_size, 3]`` uint8
        (``[64 | 16 | 20, 600, 84, 84, 3]`` for the standard files) and the class names
        (WordNet ids), sorted.

    Raises:
        FileNotFoundError: none of the accepted files is there; the message names the files
            expected, the folders searched and where to get them.
        ValueError: a bad argument, or a file with the wrong content (the message says what
            was expected).

    Example:
        >>> data = load_miniimagenet("test")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        (20, 600, 84, 84, 3)
    """
    check_choice("split", split, SPLITS)
    check_positive_int("image_size", image_size)
    root = data_root(root)
    folders = [root / "miniimagenet", root]
    cache_file = cache_folder(cache_dir, "miniimagenet", root) / f"{split}_{image_size}px.npz"
    path = find_file(f"mini-imagenet-cache-{split}.pkl", folders) or find_file(
        f"mini-imagenet-cache-{split}.npz", folders
    )
    if path is not None:
        data = _read_pickle(path) if path.suffix == ".pkl" else _read_npz(path)
        if data.images.shape[2:4] == (image_size, image_size):
            return data
        return cached(cache_file, lambda: _resize(data, image_size))
    csv_path = find_file(f"{split}.csv", [folder for folder in folders if (folder / "images").is_dir()])
    if csv_path is not None:
        return cached(cache_file, lambda: _read_folder(csv_path, csv_path.parent / "images", image_size))
    raise FileNotFoundError(
        f"miniImageNet split {split!r} not found in {folders[0]} or {folders[1]}: expected "
        f"mini-imagenet-cache-{split}.pkl, mini-imagenet-cache-{split}.npz, or {split}.csv next to an images/ "
        f"folder. {_WHERE.format(split=split)}. Put them in {folders[0]}, or pass root= / set $METAJAX_DATA."
    )


def _read_pickle(path: Path) -> ImageClasses:
    """Rows of ``image_data`` grouped by ``class_dict``."""
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="latin1")
    except UNREADABLE as err:
        raise ValueError(
            f"{damaged(path, err)}. Delete it and get a fresh copy: {_WHERE.format(split='<split>')}."
        ) from err
    if not (isinstance(content, dict) and {"image_data", "class_dict"} <= content.keys()):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} must hold a dict with keys 'image_data' and 'class_dict', got {found}.")
    return _group(path, np.asarray(content["image_data"]), {str(k): v for k, v in content["class_dict"].items()})


def _read_npz(path: Path) -> ImageClasses:
    """Rows of ``image_data`` grouped by ``labels``."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as content:  # closed even when np.load fails
            files = sorted(content.files)
            arrays = (content["image_data"], content["labels"]) if {"image_data", "labels"} <= set(files) else None
    except UNREADABLE as err:
        raise ValueError(f"{damaged(path, err)}. Delete it and write it again from a good copy.") from err
    if arrays is None:
        raise ValueError(f"{path} must hold arrays 'image_data' and 'labels', got {files}.")
    image_data, labels = arrays
    if labels.shape != image_data.shape[:1]:
        raise ValueError(
            f"{path}: 'labels' must have shape [N] = {image_data.shape[:1]} like 'image_data', got {labels.shape}."
        )
    return _group(path, image_data, {str(label): np.flatnonzero(labels == label) for label in np.unique(labels)})


def _group(path: Path, image_data: np.ndarray, class_dict: dict) -> ImageClasses:
    """``[classes, examples, H, W, 3]`` from rows ``[N, H, W, 3]`` and class name -> row indices."""
    if image_data.dtype != np.uint8 or image_data.ndim != 4 or image_data.shape[-1] != 3:
        raise ValueError(
            f"{path}: 'image_data' must be uint8 [N, H, W, 3], got {image_data.dtype} {tuple(image_data.shape)}."
        )
    names = tuple(sorted(class_dict))
    counts = {name: len(class_dict[name]) for name in names}
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"{path}: every class must have the same number of images (600 in miniImageNet), got "
            f"{min(counts.values())} to {max(counts.values())}."
        )
    return ImageClasses(np.stack([image_data[np.asarray(class_dict[name])] for name in names]), names)


def _resize(data: ImageClasses, image_size: int) -> ImageClasses:
    """Every image resized to ``image_size`` with ``LANCZOS``."""
    return ImageClasses(resize_images(data.images, image_size), data.names)


def _read_folder(csv_path: Path, image_folder: Path, image_size: int) -> ImageClasses:
    """Decode the images a Ravi split CSV (``filename,label``) names, grouped by label."""
    rows: dict[str, list[str]] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} must have a header 'filename,label', got {reader.fieldnames}.")
        for row in reader:
            rows.setdefault(row["label"], []).append(row["filename"])

    def decode(filename: str) -> np.ndarray:
        path = image_folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{csv_path} names the image {filename}, which is not in {image_folder}.")
        return decode_image(path.read_bytes(), mode="RGB", size=image_size)

    names = sorted(rows)
    image_data = np.stack([decode(filename) for name in names for filename in rows[name]])
    starts = np.cumsum([0] + [len(rows[name]) for name in names])
    return _group(csv_path, image_data, {name: np.arange(starts[i], starts[i + 1]) for i, name in enumerate(names)})
