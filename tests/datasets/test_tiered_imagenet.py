"""tieredImageNet on tiny files of both releases (MetaOptNet's npz, the original PNG pickle) and their labels."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import cache_of
from metajax.datasets import load_tiered_imagenet
from metajax.datasets import tiered_imagenet as tiered_module
from metajax.tasks import RaggedFewShot, benchmark

# The class of each row, interleaved and of unequal sizes: class 0 holds 4 images, class 1 two, class 2 three.
LABELS = np.array([2, 0, 1, 0, 2, 0, 1, 2, 0])
SIDE = 8


def _images() -> np.ndarray:
    """``[9, 8, 8, 3]``: red = 10 * label, green = the row in the file."""
    images = np.zeros((len(LABELS), SIDE, SIDE, 3), np.uint8)
    images[..., 0] = 10 * LABELS[:, None, None]
    images[..., 1] = np.arange(len(LABELS))[:, None, None]
    return images


def _check(data, names: tuple[str, ...], side: int = SIDE) -> None:
    """Classes in label order, each class's rows in file order."""
    assert data.names == names
    np.testing.assert_array_equal(data.counts, [4, 2, 3])
    rows = [r for label in range(3) for r in np.flatnonzero(LABELS == label)]  # independent of the loader's sort
    assert data.images.shape == (9, side, side, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images[:, 0, 0, 0], 10 * LABELS[rows])
    np.testing.assert_array_equal(data.images[:, 0, 0, 1], rows)


def _write_metaoptnet(folder: Path, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{split}_images.npz", images=_images())
    with open(folder / f"{split}_labels.pkl", "wb") as f:
        pickle.dump({"labels": LABELS.tolist()}, f, protocol=2)


def _write_original(folder: Path, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pngs = []
    for image in _images():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(np.frombuffer(buffer.getvalue(), np.uint8))  # as the release stores them
    with open(folder / f"{split}_images_png.pkl", "wb") as f:
        pickle.dump(pngs, f, protocol=2)
    labels = {"label_specific": LABELS, "label_general": LABELS // 2, "label_specific_str": ["n01", "n02", "n03"]}
    with open(folder / f"{split}_labels.pkl", "wb") as f:
        pickle.dump(labels, f, protocol=2)


def test_metaoptnet_npz(tmp_path):
    _write_metaoptnet(tmp_path / "tieredImageNet", "val")
    _check(load_tiered_imagenet("val", root=tmp_path, image_size=SIDE, cache_dir=tmp_path / "cache"), ("0", "1", "2"))
    assert not (tmp_path / "cache").exists()  # ready arrays need no cache


def test_original_png_pickle_is_decoded_once(tmp_path, monkeypatch):
    _write_original(tmp_path / "tiered-imagenet", "test")
    data = load_tiered_imagenet("test", root=tmp_path, image_size=SIDE, cache_dir=tmp_path / "cache")
    _check(data, ("n01", "n02", "n03"))
    assert (cache_of(tmp_path / "cache", "tiered_imagenet", tmp_path) / f"test_{SIDE}px.npz").is_file()
    monkeypatch.setattr(tiered_module, "decode_image", lambda *a, **k: pytest.fail("decoded twice"))
    _check(load_tiered_imagenet("test", root=tmp_path, image_size=SIDE, cache_dir=tmp_path / "cache"), data.names)


def test_other_sizes_are_resized_once(tmp_path, monkeypatch):
    _write_metaoptnet(tmp_path, "train")
    _check(load_tiered_imagenet("train", root=tmp_path, image_size=4, cache_dir=tmp_path / "cache"), ("0", "1", "2"), 4)
    monkeypatch.setattr(tiered_module, "_read_npz", lambda *a: pytest.fail("the arrays were read again"))
    _check(load_tiered_imagenet("train", root=tmp_path, image_size=4, cache_dir=tmp_path / "cache"), ("0", "1", "2"), 4)


def test_missing_tiered_imagenet_names_the_files_the_folders_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_tiered_imagenet("train", root=tmp_path)
    message = str(err.value)
    for expected in (
        "tieredImageNet split 'train' not found in",
        str(tmp_path / "tieredImageNet"),
        "train_labels.pkl next to train_images.npz or train_images_png.pkl",
        "kjunelee/MetaOptNet",
        "renmengye/few-shot-ssl-public",
    ):
        assert expected in message, message


def test_bad_tiered_imagenet_contents_are_named(tmp_path):
    _write_metaoptnet(tmp_path, "val")
    with open(tmp_path / "val_labels.pkl", "wb") as f:
        pickle.dump({"classes": [0]}, f)
    with pytest.raises(
        ValueError, match=r"must hold a dict with the key 'labels' or 'label_specific', got \['classes'\]"
    ):
        load_tiered_imagenet("val", root=tmp_path, image_size=SIDE)
    with open(tmp_path / "val_labels.pkl", "wb") as f:
        pickle.dump({"labels": LABELS[:-1]}, f)
    with pytest.raises(ValueError, match="holds 9 images but its labels file 8 labels"):
        load_tiered_imagenet("val", root=tmp_path, image_size=SIDE)
    (tmp_path / "val_labels.pkl").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"val_labels.pkl is empty \(0 bytes\). Delete it and get a fresh copy: .* get val_images.npz"
    ):
        load_tiered_imagenet("val", root=tmp_path, image_size=SIDE)


def test_benchmark_tiered_imagenet_is_ragged(tmp_path):
    for split in ("train", "val", "test"):
        _write_metaoptnet(tmp_path / "tieredImageNet", split)
    tasks = benchmark("tiered-imagenet", ways=3, shots=1, queries=1, root=tmp_path, image_size=SIDE)
    assert all(isinstance(t, RaggedFewShot) and t.num_classes == 3 for t in tasks)
    assert tasks.test.images.shape == (9, SIDE, SIDE, 3) and tasks.test.names == ("0", "1", "2")
