"""CUB-200-2011 (Wah et al., 2011) with the few-shot class split of Chen et al. (2019), from the official archive.

Files, looked up in ``root`` and ``root/cub`` (``root``: the argument, else
``$METAJAX_DATA``, else ``~/.cache/metajax``):

* the extracted folder ``CUB_200_2011/`` with ``images/``, ``images.txt``,
  ``image_class_labels.txt`` and ``classes.txt``, or else
* the archive ``CUB_200_2011.tgz`` from data.caltech.edu (CaltechDATA record
  65de6-vp158), checked against its official md5 and extracted next to itself;
  downloaded into ``root/cub`` when missing (1.1 GB).

The split is that of "A Closer Look at Few-shot Classification" (Chen et al., ICLR 2019,
``filelists/CUB/write_CUB_filelist.py`` of github.com/wyharveychen/CloserLookFewShot),
also used by torchmeta and learn2learn: with the 200 classes in order (class ids 1..200,
the sorted folder names), class ``i`` (from 0) is meta-training when ``i % 2 == 0``,
meta-validation when ``i % 4 == 1`` and meta-test when ``i % 4 == 3``: 100 / 50 / 50
classes. Classes hold 41 to 60 images, so a split is a :class:`RaggedImageClasses`.
Images are converted to RGB and resized (not cropped) to ``image_size`` with PIL
``LANCZOS``, decoded once and cached under ``cache_dir`` (else ``$METAJAX_CACHE``, else
``~/.cache/metajax/cache``).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.datasets._files import (
    KnownFile,
    RaggedImageClasses,
    cache_folder,
    cached,
    data_root,
    decode_image,
    find_file,
    obtain,
)

SPLITS = ("train", "val", "test")
"""Accepted values of ``split`` (100, 50 and 50 classes)."""

_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
_ARCHIVE = "CUB_200_2011.tgz"
_FOLDER = "CUB_200_2011"
_KNOWN = (KnownFile(None, "md5", "97eceeb196236b17998738112f37df78", "official release"),)
_REMAINDERS = {"train": (0, 2), "val": (1,), "test": (3,)}  # class i of the split when i % 4 is one of these


def load_cub(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 84,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 60.0,
) -> RaggedImageClasses:
    """Load a CUB-200-2011 split of Chen et al. (2019) as class-by-class images of unequal counts.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (100, 50 and 50 bird species).
        root: folder holding the data; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: side of the square images.
        cache_dir: folder of the decoded-array cache; ``None`` for ``$METAJAX_CACHE`` or
            ``~/.cache/metajax/cache``.
        download: fetch a missing ``CUB_200_2011.tgz`` from data.caltech.edu.
        timeout: seconds to wait on the network before giving up a download.

    Returns:
        ``RaggedImageClasses``: ``images`` ``[total, image_size, image_size, 3]`` uint8,
        class by class in class-id order, each class's images in ``images.txt`` order;
        ``counts`` ``[classes]``; ``names`` from ``classes.txt`` (``"001.Black_footed_Albatross"``).

    Raises:
        FileNotFoundError: the data is missing (and was not downloaded), or ``images.txt``
            names an image that is not there; the message says where to get it.
        ValueError: a bad argument, an archive that matches no official release, or a
            malformed metadata file.

    Example:
        >>> data = load_cub("test")  # doctest: +SKIP
        >>> len(data.counts), data.images.shape[1:]  # doctest: +SKIP
        (50, (84, 84, 3))
    """
    check_choice("split", split, SPLITS)
    check_positive_int("image_size", image_size)
    check_positive("timeout", timeout)
    root = data_root(root)
    cache_file = cache_folder(cache_dir, "cub", root) / f"{split}_{image_size}px.npz"
    return cached(cache_file, lambda: _decode(_folder(root, download, timeout), split, image_size))


def _folder(root: Path, download: bool, timeout: float) -> Path:
    """The extracted ``CUB_200_2011`` folder, extracted from the (downloaded) archive when missing."""
    folders = [root, root / "cub"]
    listing = find_file(f"{_FOLDER}/images.txt", folders)
    if listing is not None:
        return listing.parent
    missing = (
        f"CUB-200-2011 not found in {folders[0]} or {folders[1]}: expected the folder {_FOLDER}/ (images/, "
        f"images.txt, image_class_labels.txt, classes.txt) or the archive {_ARCHIVE}. Get {_ARCHIVE} from "
        f"{_URL} and put it (or its extracted folder) in {folders[1]}, or point to the folder holding it with "
        f"root= (--data-root of metajax train) or $METAJAX_DATA."
    )
    archive = obtain(_ARCHIVE, folders, _KNOWN, _URL, download=download, timeout=timeout, missing=missing)
    if not hasattr(tarfile, "data_filter"):
        raise RuntimeError(
            f"Extracting {archive} safely needs Python >= 3.10.12 (tarfile's 'data' filter); "
            f"extract it yourself into {archive.parent}."
        )
    # Extracted beside the archive into a temporary folder, moved in place once whole: an interrupted
    # extraction leaves no half folder that would later pass for the dataset.
    staging = Path(tempfile.mkdtemp(prefix=".cub-", dir=archive.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")  # "data": no absolute paths, links or devices
        if not (staging / _FOLDER / "images.txt").is_file():
            raise ValueError(f"{archive} holds no {_FOLDER}/images.txt; is it the CUB-200-2011 archive?")
        os.replace(staging / _FOLDER, archive.parent / _FOLDER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return archive.parent / _FOLDER


def _table(path: Path) -> list[tuple[int, str]]:
    """``(id, rest)`` of each line ``<id> <rest>`` of a CUB metadata file."""
    if not path.is_file():
        raise FileNotFoundError(f"CUB-200-2011 file {path} not found. Extract the whole of {_ARCHIVE} from {_URL}.")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        first, _, rest = line.strip().partition(" ")
        if not first.isdigit() or not rest.strip():
            raise ValueError(f"{path}, line {number}: expected '<id> <value>', got {line!r}.")
        rows.append((int(first), rest.strip()))
    return rows


def _decode(folder: Path, split: str, image_size: int) -> RaggedImageClasses:
    """The split's classes, each class's images decoded in image-id order."""
    classes = sorted(_table(folder / "classes.txt"))
    paths = dict(_table(folder / "images.txt"))
    labels = _table(folder / "image_class_labels.txt")
    chosen = [(class_id, name) for i, (class_id, name) in enumerate(classes) if i % 4 in _REMAINDERS[split]]
    by_class: dict[int, list[str]] = {class_id: [] for class_id, _ in chosen}
    for image_id, label in sorted(labels):
        if not label.isdigit() or image_id not in paths:
            raise ValueError(
                f"{folder / 'image_class_labels.txt'}: image {image_id} has label {label!r}; expected a class id "
                f"of classes.txt and an image id of images.txt."
            )
        if int(label) in by_class:
            by_class[int(label)].append(paths[image_id])

    def decode(relative: str) -> np.ndarray:
        path = folder / "images" / relative
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder / 'images.txt'} names the image {relative}, which is not in {path.parent}."
            )
        return decode_image(path.read_bytes(), mode="RGB", size=image_size)

    images = [decode(relative) for class_id, _ in chosen for relative in by_class[class_id]]
    counts = np.array([len(by_class[class_id]) for class_id, _ in chosen], np.int64)
    stacked = np.stack(images) if images else np.empty((0, image_size, image_size, 3), np.uint8)
    return RaggedImageClasses(stacked, counts, tuple(name for _, name in chosen))
