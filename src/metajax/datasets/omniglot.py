"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015) from the official zips.

Files, looked up in ``root`` and ``root/omniglot`` (``root``: the argument, else
``$METAJAX_DATA``, else ``~/.cache/metajax``):

* ``images_background.zip`` and ``images_evaluation.zip``, the official zips of
  github.com/brendenlake/omniglot (``python/``), downloaded into ``root/omniglot`` when
  missing. Each is checked against the official md5 or a known pixel-identical rebuild.
* For the Vinyals et al. (2016) splits, ``splits/vinyals/{train,val,test,trainval}.txt``
  from github.com/jakesnell/prototypical-networks (``data/omniglot/splits/vinyals/``), in
  ``root/omniglot/splits/vinyals`` or ``root/splits/vinyals``.

The PNGs are decoded once per image size and cached as a compressed ``.npz`` under the
cache folder (``cache_dir``, else ``$METAJAX_CACHE``, else ``~/.cache/metajax/cache``);
later loads read only the cache.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.datasets._files import (
    ImageClasses,
    KnownFile,
    cache_folder,
    cached,
    data_root,
    decode_image,
    find_file,
    obtain,
)

SPLITS = ("background", "evaluation", "vinyals-train", "vinyals-val", "vinyals-test", "vinyals-trainval")
"""Accepted values of ``split``: Lake's two sets, and the Vinyals splits with rotations as classes."""

_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
_SPLITS_URL = "https://github.com/jakesnell/prototypical-networks (data/omniglot/splits/vinyals/)"
# Accepted zips: the official releases, and the rebuilt copies (same folders, pixel-identical PNGs) that
# circulate where the official files cannot be fetched.
_KNOWN = {
    "background": (
        KnownFile(9464212, "md5", "68d2efa1b9178cc56df9314c21c6e718", "official release"),
        KnownFile(8323033, "sha256", "abf44186bc1462821b725d65fa0df6718e931c48c1d8820883cc2c6455e7f2ad", "rebuild"),
    ),
    "evaluation": (
        KnownFile(6462886, "md5", "6b91aef0f799c5bb55b94e3f2daec811", "official release"),
        KnownFile(5622192, "sha256", "8b108695c22f8cda8291b8f899acf53271843656a6a99455a07cd8ce9da48633", "rebuild"),
    ),
}
_ROTATIONS = {"rot000": 0, "rot090": 1, "rot180": 2, "rot270": 3}


def load_omniglot(
    split: str = "background",
    *,
    root: str | os.PathLike | None = None,
    image_size: int | None = 28,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 60.0,
) -> ImageClasses:
    """Load Omniglot as class-major uint8 images.

    Pixels are the official 1-bit drawings inverted so that strokes are bright (255) on a
    dark (0) background, the convention of MAML's data loader (``1 - image``). Resizing
    converts to 8-bit grayscale first, then applies PIL ``LANCZOS``, the filter cbfinn/maml
    asks for (on the 1-bit originals PIL silently falls back to nearest neighbour), so
    edges are anti-aliased.

    Args:
        split: one of :data:`SPLITS`. ``"background"`` (964 characters) and
            ``"evaluation"`` (659 characters) are Lake et al.'s sets, classes sorted by
            name. ``"vinyals-train"``, ``"vinyals-val"``, ``"vinyals-test"`` and
            ``"vinyals-trainval"`` (1028, 172, 423 and 1200 characters) follow the split
            file line by line: each line ``Alphabet/characterNN/rotDDD`` is one class, the
            character rotated counter-clockwise by ``DDD`` degrees (as the Prototypical
            Networks loader does), so there are 4 classes per character.
        root: folder holding the data; ``None`` for ``$METAJAX_DATA`` or ``~/.cache/metajax``.
        image_size: side of the square images; ``None`` keeps the original 105.
        cache_dir: folder of the decoded-array cache; ``None`` for ``$METAJAX_CACHE`` or
            ``~/.cache/metajax/cache``.
        download: fetch a missing zip from the official repository into ``root/omniglot``.
        timeout: seconds to wait on the network before giving up a download.

    Returns:
        ``ImageClasses``: ``images`` ``[classes, 20, image_size, image_size, 1]`` uint8 and
        ``names``: ``"Alphabet/characterNN"`` (Lake's sets) or the split-file line
        ``"Alphabet/characterNN/rotDDD"`` (Vinyals splits).

    Raises:
        FileNotFoundError: a zip or split file is missing (and could not be downloaded);
            the message says where to put it and where to get it.
        ValueError: a bad argument, a zip that matches no known release ("corrupt"), or a
            malformed split file.

    Example:
        >>> data = load_omniglot("vinyals-train")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        (4112, 20, 28, 28, 1)
    """
    check_choice("split", split, SPLITS)
    if image_size is not None:
        check_positive_int("image_size", image_size)
    check_positive("timeout", timeout)
    root = data_root(root)
    cache = cache_folder(cache_dir, "omniglot", root)
    if split in _KNOWN:
        return _load_set(split, root, cache, image_size, download, timeout)
    lines = _read_split(split.removeprefix("vinyals-"), root)
    sources = {}
    for part in _KNOWN:
        data = _load_set(part, root, cache, image_size, download, timeout)
        sources.update({name: image for name, image in zip(data.names, data.images, strict=True)})
    images = np.empty((len(lines), *data.images.shape[1:]), np.uint8)
    for c, (character, rotation) in enumerate(lines):
        if character not in sources:
            raise ValueError(f"split {split!r} names the character {character!r}, which is in neither Omniglot zip.")
        images[c] = np.rot90(sources[character], k=rotation, axes=(1, 2))
    return ImageClasses(images, tuple(f"{character}/rot{90 * rotation:03d}" for character, rotation in lines))


def _load_set(
    part: str, root: Path, cache: Path, image_size: int | None, download: bool, timeout: float
) -> ImageClasses:
    """Lake's ``part`` set, from the cache or decoded from its zip (then cached)."""
    return cached(
        cache / f"{part}_{image_size or 105}px.npz",
        lambda: _decode(_zip_file(part, root, download, timeout), image_size),
    )


def _zip_file(part: str, root: Path, download: bool, timeout: float) -> Path:
    """The verified zip of ``part``, downloaded into ``root/omniglot`` when missing."""
    name = f"images_{part}.zip"
    url = _URL + name
    folders = [root, root / "omniglot"]
    missing = (
        f"Omniglot file {name} not found in {folders[0]} or {folders[1]}. Omniglot needs the official "
        f"zips images_background.zip and images_evaluation.zip (Lake et al. 2015) in one of them; or point "
        f"to the folder holding them with the root= argument (--data-root of metajax train) or "
        f"$METAJAX_DATA. Get {name} from {url}."
    )
    return obtain(name, folders, _KNOWN[part], url, download=download, timeout=timeout, missing=missing)


def _decode(path: Path, image_size: int | None) -> ImageClasses:
    """Decode ``images_<part>/<Alphabet>/<characterNN>/<id>_<drawer>.png`` entries, sorted by name."""
    files: dict[str, list[str]] = {}
    with zipfile.ZipFile(path) as archive:
        for entry in archive.namelist():
            parts = entry.split("/")
            if len(parts) == 4 and parts[3].endswith(".png"):
                files.setdefault(f"{parts[1]}/{parts[2]}", []).append(entry)
        names = tuple(sorted(files))
        images = np.stack(
            [
                np.stack([decode_image(archive.read(e), mode="L", size=image_size) for e in sorted(files[n])])
                for n in names
            ]
        )
    return ImageClasses((255 - images)[..., None], names)


def _read_split(name: str, root: Path) -> list[tuple[str, int]]:
    """``(Alphabet/characterNN, quarter turns)`` per line of the Vinyals split file ``name``."""
    filename = f"{name}.txt"
    folders = [root / "omniglot" / "splits" / "vinyals", root / "splits" / "vinyals"]
    path = find_file(filename, folders)
    if path is None:
        raise FileNotFoundError(
            f"Vinyals split file {filename} not found in {folders[0]} or {folders[1]}. Get "
            f"data/omniglot/splits/vinyals/{filename} from {_SPLITS_URL} and put it in {folders[0]}."
        )
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        alphabet, _, rest = line.strip().partition("/")
        character, _, rotation = rest.partition("/")
        if not (alphabet and character) or rotation not in _ROTATIONS:
            raise ValueError(
                f"{path}, line {number}: expected 'Alphabet/characterNN/rotDDD' with DDD in 000, 090, 180, "
                f"270; got {line!r}."
            )
        lines.append((f"{alphabet}/{character}", _ROTATIONS[rotation]))
    return lines
