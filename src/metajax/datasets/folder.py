"""Your own dataset: a folder of class folders of images (``root/<class>/<image>``), as in torchvision's ImageFolder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from metajax._checks import check_choice, check_positive_int
from metajax.datasets._files import RaggedImageClasses, decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File suffixes read as images (any case); other files are ignored."""
MODES = {"RGB": 3, "L": 1}
"""Accepted values of ``mode`` and the channels each gives."""


def load_image_folder(root: str | os.PathLike, *, image_size: int = 84, mode: str = "RGB") -> RaggedImageClasses:
    """Load every image of ``root/<class>/<image>`` into one array, class by class.

    Each sub-folder of ``root`` is a class (sorted by name; hidden ones skipped); its files
    with a suffix of :data:`IMAGE_SUFFIXES` are its images (sorted by name). Images are
    converted to ``mode`` and resized to ``image_size`` with PIL ``LANCZOS``. Nothing is
    cached: decoding runs on every call. A class of fewer than ``shots + queries`` images
    is refused by :class:`metajax.tasks.RaggedFewShot`, which names it.

    Args:
        root: the folder of class folders.
        image_size: side of the square images.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (grayscale, 1 channel).

    Returns:
        ``RaggedImageClasses``: ``images`` ``[total, image_size, image_size, channels]``
        uint8, ``counts`` ``[classes]`` and ``names`` (the class folders' names).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: a bad argument, ``root`` holds no class folder, or a file that is not
            a readable image (the message names it).

    Example:
        >>> from metajax import tasks
        >>> data = load_image_folder("my_birds", image_size=84)  # doctest: +SKIP
        >>> task = tasks.from_images(data, ways=5, shots=1, queries=15)  # doctest: +SKIP
    """
    check_positive_int("image_size", image_size)
    check_choice("mode", mode, MODES)
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"root must be a folder of class folders (root/<class>/<image>), got {folder}.")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"root {folder} holds no class folders; expected root/<class>/<image>.")
    files = [
        sorted(
            p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        for c in classes
    ]

    def decode(path: Path) -> np.ndarray:
        try:
            image = decode_image(path.read_bytes(), mode=mode, size=image_size)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path} is not a readable image ({type(err).__name__}: {err}).") from err
        return image.reshape(image_size, image_size, MODES[mode])

    images = [decode(path) for paths in files for path in paths]
    stacked = np.stack(images) if images else np.empty((0, image_size, image_size, MODES[mode]), np.uint8)
    return RaggedImageClasses(stacked, np.array([len(p) for p in files], np.int64), tuple(c.name for c in classes))
