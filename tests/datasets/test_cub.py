"""CUB-200-2011 on a tiny copy in the official layout: 8 species of 2 to 9 images, listed out of order."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import cache_of
from metajax.datasets import cub as cub_module
from metajax.datasets import load_cub
from metajax.datasets._files import KnownFile
from metajax.tasks import RaggedFewShot, benchmark

SPECIES = [f"{i + 1:03d}.Bird_{chr(ord('a') + i)}" for i in range(8)]
# Chen et al. (2019): class i (from 0, in class-id order) trains when i % 2 == 0, validates when i % 4 == 1,
# tests when i % 4 == 3.
EXPECTED = {"train": [0, 2, 4, 6], "val": [1, 5], "test": [3, 7]}


def _count(c: int) -> int:
    return 2 + c  # class c holds 2 + c images: unequal sizes


COLOURS: dict[str, tuple[int, int, int]] = {}  # image path (as in images.txt) -> its colour


def _write(root: Path) -> Path:
    """``root/CUB_200_2011`` with uniform images: red = 10 * (class id), green = the order it was written in."""
    folder = root / "CUB_200_2011"
    pairs = [(c, k) for c in range(8) for k in range(_count(c))]
    ids = np.random.default_rng(0).permutation(len(pairs)) + 1  # image ids interleave the classes
    images, labels = [], []
    for (c, k), image_id in zip(pairs, ids, strict=True):
        relative = f"{SPECIES[c]}/{SPECIES[c][4:]}_{image_id:04d}.jpg"
        (folder / "images" / SPECIES[c]).mkdir(parents=True, exist_ok=True)
        mode = "L" if (c, k) == (2, 0) else "RGB"  # CUB holds a few grayscale images
        colour = (50, 50, 50) if mode == "L" else (10 * (c + 1), k, 7)
        Image.new(mode, (40, 30), colour[0] if mode == "L" else colour).save(folder / "images" / relative, format="PNG")
        COLOURS[relative] = colour  # PNG in a .jpg: lossless, so pixels are exact
        images.append(f"{image_id} {relative}")
        labels.append(f"{image_id} {c + 1}")
    (folder / "images.txt").write_text("\n".join(images[::-1]) + "\n")  # listed out of id order
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("".join(f"{c + 1} {SPECIES[c]}\n" for c in range(8)))
    return folder


def _expected_rows(folder: Path, classes: list[int]) -> list[tuple[int, int, int]]:
    """The colour of each row: the classes in order, each class's images by image id (read from images.txt)."""
    lines = [line.split() for line in (folder / "images.txt").read_text().splitlines()]
    by_id = sorted((int(image_id), relative) for image_id, relative in lines)
    return [COLOURS[r] for c in classes for _, r in by_id if r.startswith(SPECIES[c] + "/")]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_cub_split_classes_counts_and_order(tmp_path, split):
    folder = _write(tmp_path / "cub")
    data = load_cub(split, root=tmp_path, image_size=16, cache_dir=tmp_path / "cache")
    classes = EXPECTED[split]
    assert data.names == tuple(SPECIES[c] for c in classes)
    np.testing.assert_array_equal(data.counts, [_count(c) for c in classes])
    assert data.images.shape == (sum(_count(c) for c in classes), 16, 16, 3) and data.images.dtype == np.uint8
    expected = np.asarray(_expected_rows(folder, classes), np.uint8)
    np.testing.assert_array_equal(data.images, np.broadcast_to(expected[:, None, None, :], data.images.shape))
    np.testing.assert_array_equal(data.offsets, np.concatenate([[0], np.cumsum(data.counts)[:-1]]))


def test_cub_is_decoded_once(tmp_path, monkeypatch):
    _write(tmp_path)
    first = load_cub("val", root=tmp_path, cache_dir=tmp_path / "cache")
    assert (cache_of(tmp_path / "cache", "cub", tmp_path) / "val_84px.npz").is_file()
    monkeypatch.setattr(cub_module, "decode_image", lambda *a, **k: pytest.fail("decoded twice"))
    again = load_cub("val", root=tmp_path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.counts, first.counts)
    assert again.names == first.names


def _archive(tmp_path: Path) -> tuple[Path, bytes]:
    source = _write(tmp_path / "source")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source, arcname="CUB_200_2011")
    path = tmp_path / "data" / "cub" / "CUB_200_2011.tgz"
    path.parent.mkdir(parents=True)
    path.write_bytes(buffer.getvalue())
    return path, buffer.getvalue()


def test_cub_archive_is_verified_then_extracted(tmp_path, monkeypatch):
    path, raw = _archive(tmp_path)
    with pytest.raises(ValueError, match=r"CUB_200_2011.tgz is corrupt or an unknown version") as err:
        load_cub("test", root=tmp_path / "data", cache_dir=tmp_path / "cache", download=False)
    assert "97eceeb196236b17998738112f37df78" in str(err.value) and "data.caltech.edu" in str(err.value)
    assert not (path.parent / "CUB_200_2011").exists()  # nothing extracted from an unverified archive
    known = (KnownFile(len(raw), "md5", hashlib.md5(raw).hexdigest(), "test copy"),)
    monkeypatch.setattr(cub_module, "_KNOWN", known)
    data = load_cub("test", root=tmp_path / "data", cache_dir=tmp_path / "cache", download=False)
    assert data.names == (SPECIES[3], SPECIES[7]) and (path.parent / "CUB_200_2011" / "images.txt").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["CUB_200_2011", "CUB_200_2011.tgz"]  # no staging left


def test_missing_cub_names_the_files_the_folders_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cub("train", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    for expected in (
        "CUB-200-2011 not found in",
        str(tmp_path / "cub"),
        "CUB_200_2011/ (images/, images.txt, image_class_labels.txt, classes.txt)",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        "download=False",
    ):
        assert expected in message, message


def test_cub_metadata_naming_a_missing_image_or_malformed_is_named(tmp_path):
    folder = _write(tmp_path)
    missing = sorted((folder / "images" / SPECIES[1]).iterdir())[0]
    missing.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"images.txt names the image {SPECIES[1]}/{missing.name}, which is not"
    ):
        load_cub("val", root=tmp_path, cache_dir=tmp_path / "cache")
    (folder / "classes.txt").write_text("1 001.Bird_a\nBird_b\n")
    with pytest.raises(ValueError, match=r"classes.txt, line 2: expected '<id> <value>', got 'Bird_b'"):
        load_cub("val", root=tmp_path, cache_dir=tmp_path / "cache")


def test_benchmark_cub_is_ragged_and_refuses_small_classes_by_name(tmp_path):
    _write(tmp_path)
    tasks = benchmark("cub", ways=2, shots=1, queries=1, root=tmp_path, image_size=8, cache_dir=tmp_path / "cache")
    assert all(isinstance(t, RaggedFewShot) for t in tasks)
    assert [t.num_classes for t in tasks] == [4, 2, 2]
    episode = jax.jit(lambda task, key: task.sample(key, 3))(tasks.train, jax.random.key(0))
    assert episode.support_x.shape == (3, 2, 8, 8, 3) and episode.query_y.shape == (3, 2)
    with pytest.raises(ValueError, match=r"class 0 \('001.Bird_a'\) has 2"):
        benchmark("cub", ways=2, shots=2, queries=1, root=tmp_path, image_size=8, cache_dir=tmp_path / "cache")
