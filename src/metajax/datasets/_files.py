"""File handling shared by the dataset loaders: locations, verification, download, caches."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar, cast

import numpy as np
from PIL import Image

_DEFAULT_ROOT = Path("~/.cache/metajax")
# What reading a zero-byte, truncated or corrupt .npz / .pkl raises.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


class ImageClasses(NamedTuple):
    """A class-major image dataset.

    Attributes:
        images: ``[classes, examples, H, W, C]`` uint8, pixel values 0..255.
        names: one name per class, ``len(names) == images.shape[0]``.
    """

    images: np.ndarray
    names: tuple[str, ...]


class RaggedImageClasses(NamedTuple):
    """An image dataset whose classes differ in size, ready for :class:`metajax.tasks.RaggedFewShot`.

    Attributes:
        images: ``[total, H, W, C]`` uint8, class by class: class ``c`` owns the ``counts[c]``
            rows after those of classes ``0 .. c-1``.
        counts: ``[classes]`` int64, images per class.
        names: one name per class, ``len(names) == len(counts)``.
    """

    images: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...]

    @property
    def offsets(self) -> np.ndarray:
        """``[classes]`` int64: each class's first row."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


Data = TypeVar("Data", ImageClasses, RaggedImageClasses)


class KnownFile(NamedTuple):
    """One accepted release of a file: its size in bytes (``None``: not published) and a digest.

    ``algorithm`` is a ``hashlib`` name.
    """

    size: int | None
    algorithm: str
    digest: str
    release: str


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root``, else ``$METAJAX_DATA``, else ``~/.cache/metajax``."""
    if root is None:
        root = os.environ.get("METAJAX_DATA") or _DEFAULT_ROOT
    return Path(root).expanduser()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where decoded arrays are cached: ``cache_dir``, else ``$METAJAX_CACHE``, else ``~/.cache/metajax/cache``.

    The default never lies inside the data root, so a shared, read-only data folder stays untouched.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("METAJAX_CACHE") or _DEFAULT_ROOT / "cache"
    return Path(cache_dir).expanduser()


def cache_folder(cache_dir: str | os.PathLike | None, dataset: str, root: Path) -> Path:
    """Where ``dataset``'s arrays decoded from the data folder ``root`` are cached.

    ``cache_root(cache_dir) / dataset / KEY``, ``KEY`` the first 16 hex digits of the SHA-256
    of the resolved ``root``: two data folders never share a cache (one folder reached
    through a link does), so one process may load several.
    """
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / dataset / key


def find_file(name: str, folders: list[Path]) -> Path | None:
    """The first ``folder / name`` that exists, or ``None``."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def obtain(
    name: str,
    folders: list[Path],
    known: tuple[KnownFile, ...],
    url: str,
    *,
    download: bool,
    timeout: float,
    missing: str,
) -> Path:
    """The verified file ``name`` of the first of ``folders`` holding it, else one downloaded into ``folders[-1]``.

    Args:
        name: the file name.
        folders: where to look, in order; a download goes to the last.
        known: the accepted releases (:func:`verify_file`).
        url: the official address.
        download: fetch a missing file; otherwise a missing file is an error.
        timeout: seconds to wait on the network.
        missing: the message of the ``FileNotFoundError`` when the file is not there; the
            download's failure is appended to it.

    Raises:
        FileNotFoundError: the file is missing and was not (or could not be) downloaded.
        ValueError: the file matches no known release; a downloaded copy is removed.
    """
    path = find_file(name, folders)
    fetched = path is None
    if path is None:
        if not download:
            raise FileNotFoundError(missing + " (download=False, so it was not fetched.)")
        path = folders[-1] / name
        try:
            _download(url, path, timeout=timeout)
        except (OSError, http.client.HTTPException) as err:
            raise FileNotFoundError(f"{missing} {download_error(url, err)}") from err
    try:
        verify_file(path, known, url)
    except ValueError:
        if fetched:
            path.unlink()
        raise
    return path


def verify_file(path: Path, known: tuple[KnownFile, ...], source: str) -> None:
    """Raise ``ValueError`` (a "corrupt" file) unless ``path`` matches one of the ``known`` releases.

    Args:
        path: the file to check.
        known: accepted releases; the digest is computed only for releases of the file's size
            (or of no published size).
        source: where to get a good copy, for the message.
    """
    size = path.stat().st_size
    for release in known:
        if release.size in (None, size) and _digest(path, release.algorithm) == release.digest:
            return
    expected = "; ".join(
        f"{k.release}: {'' if k.size is None else f'{k.size} bytes, '}{k.algorithm} {k.digest}" for k in known
    )
    raise ValueError(
        f"{path} is corrupt or an unknown version ({size} bytes, matching no known release). "
        f"Expected one of: {expected}. Delete it and get a fresh copy from {source}."
    )


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, *, timeout: float) -> None:
    """Fetch ``url`` into ``dest`` (written atomically); raise ``OSError`` on failure."""

    def write(out):
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)

    _write_atomic(dest, write)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` atomically."""
    # mypy matches ``**arrays`` against savez_compressed's keyword ``allow_pickle: bool`` too.
    _write_atomic(path, lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then move it to ``path`` (``os.replace``).

    Readers see either the old file or the complete new one; on any error the temporary file
    is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def damaged(path: Path, err: BaseException) -> str:
    """``"<path> is empty (0 bytes)"`` or ``"<path> is truncated or corrupt (<error>)"``, for messages."""
    if path.is_file() and path.stat().st_size == 0:
        return f"{path} is empty (0 bytes)"
    return f"{path} is truncated or corrupt ({type(err).__name__}: {err})"


def load_cache(path: Path) -> ImageClasses | RaggedImageClasses:
    """Read a cache written by :func:`save_cache` (``RaggedImageClasses`` when it holds ``counts``).

    Raises:
        FileNotFoundError: there is no cache at ``path``.
        ValueError: the cache is empty, truncated or corrupt (the message names it).
    """
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # closed even when np.load fails
            images, names = data["images"], tuple(str(n) for n in data["names"])
            counts = data["counts"] if "counts" in data.files else None
    except FileNotFoundError:
        raise
    except UNREADABLE as err:
        raise ValueError(damaged(path, err)) from err
    if counts is None:
        if images.dtype == np.uint8 and images.ndim == 5 and len(names) == images.shape[0]:
            return ImageClasses(images, names)
    elif images.dtype == np.uint8 and images.ndim == 4 and len(names) == len(counts) == counts.size:
        if counts.min(initial=0) >= 0 and counts.sum() == len(images):
            return RaggedImageClasses(images, counts.astype(np.int64), names)
    described = "" if counts is None else f", counts {counts.shape} summing to {counts.sum()}"
    raise ValueError(
        f"{path} does not hold a cache: images {images.dtype} {images.shape}{described}, {len(names)} names"
    )


def save_cache(path: Path, data: ImageClasses | RaggedImageClasses) -> None:
    """Store ``data`` as ``images``, ``names`` (and ``counts``) in a compressed ``.npz``, atomically."""
    names = np.asarray(data.names, dtype=np.str_)
    if isinstance(data, RaggedImageClasses):
        save_npz(path, images=data.images, counts=data.counts, names=names)
    else:
        save_npz(path, images=data.images, names=names)


def cached(path: Path, build: Callable[[], Data]) -> Data:
    """The cache at ``path`` if readable, else ``build()``, which is then written to ``path``.

    An empty, truncated or corrupt cache is named in a warning and rebuilt from its source;
    when the source is missing too, the ``FileNotFoundError`` names the cache as well.
    """
    problem = None
    try:
        return cast(Data, load_cache(path))  # each cache path is written by one loader, of one kind
    except FileNotFoundError:
        pass
    except ValueError as err:
        problem = str(err)
        warnings.warn(f"Ignoring unreadable cache: {problem}; rebuilding it.", stacklevel=2)
    try:
        data = build()
    except FileNotFoundError as err:
        if problem is None:
            raise
        raise FileNotFoundError(
            f"The cache {problem}, and it cannot be rebuilt: {err} Then delete {path}; it is rebuilt on the next load."
        ) from err
    save_cache(path, data)
    return data


def decode_image(raw: bytes, *, mode: str, size: int | None) -> np.ndarray:
    """Decode image bytes to uint8 ``[H, W]`` (mode ``"L"``) or ``[H, W, 3]`` (mode ``"RGB"``).

    Args:
        raw: the encoded file (PNG, JPEG, ...).
        mode: the PIL mode to convert to before resizing.
        size: side of the square output, resized with ``LANCZOS``; ``None`` keeps the size.
    """
    with Image.open(io.BytesIO(raw)) as opened:
        im = opened.convert(mode)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), resample=Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Images ``[..., H, W, C]`` uint8 resized to ``[..., size, size, C]`` with PIL ``LANCZOS``."""
    flat = images.reshape(-1, *images.shape[-3:])
    squeeze = flat.shape[-1] == 1  # PIL reads one channel as a 2-D image

    def one(image: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(image[..., 0] if squeeze else image).resize(
            (size, size), resample=Image.Resampling.LANCZOS
        )
        return np.asarray(resized, np.uint8).reshape(size, size, -1)

    out = np.stack([one(image) for image in flat]) if len(flat) else np.empty((0, size, size, flat.shape[-1]), np.uint8)
    return out.reshape(*images.shape[:-3], size, size, images.shape[-1])


def download_error(url: str, err: BaseException) -> str:
    """One sentence on a failed download, for error messages."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    return f"Downloading {url} failed ({type(err).__name__}: {reason})."
