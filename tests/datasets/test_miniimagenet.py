"""miniImageNet loader on tiny fake files of every accepted form, and its error messages."""

from __future__ import annotations

import pickle
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import cache_of
from metajax.datasets import load_miniimagenet
from metajax.datasets import miniimagenet as miniimagenet_module
from metajax.tasks import benchmark

CLASSES = ["n02", "n01", "n03"]  # names deliberately unsorted


def _rows(per_class: int = 6, side: int = 84) -> tuple[np.ndarray, dict[str, list[int]]]:
    """``image_data`` whose pixels encode (class, example), with classes interleaved row by row."""
    image_data = np.zeros((len(CLASSES) * per_class, side, side, 3), np.uint8)
    class_dict = {name: [] for name in CLASSES}
    for row in range(len(image_data)):
        c, e = row % len(CLASSES), row // len(CLASSES)
        image_data[row, :, :, 0], image_data[row, :, :, 1] = 10 * int(CLASSES[c][1:]), e
        class_dict[CLASSES[c]].append(row)
    return image_data, class_dict


def _check(images: np.ndarray, names: tuple[str, ...], per_class: int = 6, side: int = 84) -> None:
    assert names == ("n01", "n02", "n03")
    assert images.shape == (3, per_class, side, side, 3) and images.dtype == np.uint8
    for c, name in enumerate(names):
        np.testing.assert_array_equal(images[c, :, 0, 0, 0], 10 * int(name[1:]))
        np.testing.assert_array_equal(images[c, :, 0, 0, 1], np.arange(per_class))


def _write_pickle(folder: Path, split: str, **kwargs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image_data, class_dict = _rows(**kwargs)
    with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": class_dict}, f)


def test_pickle(tmp_path):
    _write_pickle(tmp_path / "miniimagenet", "train")
    _check(*load_miniimagenet("train", root=tmp_path, cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # ready arrays need no cache


def test_npz(tmp_path):
    image_data, class_dict = _rows()
    labels = np.empty(len(image_data), "<U3")
    for name, rows in class_dict.items():
        labels[rows] = name
    np.savez(tmp_path / "mini-imagenet-cache-val.npz", image_data=image_data, labels=labels)
    _check(*load_miniimagenet("val", root=tmp_path, cache_dir=tmp_path / "cache"))


def test_image_folder_and_csv_decoded_once(tmp_path, monkeypatch):
    image_data, class_dict = _rows(side=90)  # not 84: the loader resizes
    (tmp_path / "images").mkdir()
    lines = ["filename,label"]
    for name, rows in class_dict.items():
        for row in rows:
            Image.fromarray(image_data[row]).save(tmp_path / "images" / f"{name}{row:08d}.png")
            lines.append(f"{name}{row:08d}.png,{name}")
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    _check(*load_miniimagenet("test", root=tmp_path, cache_dir=tmp_path / "cache"))
    assert (cache_of(tmp_path / "cache", "miniimagenet", tmp_path) / "test_84px.npz").is_file()

    monkeypatch.setattr(miniimagenet_module, "decode_image", lambda *a, **k: pytest.fail("decoded twice"))
    _check(*load_miniimagenet("test", root=tmp_path, cache_dir=tmp_path / "cache"))


def test_resize_is_cached(tmp_path, monkeypatch):
    _write_pickle(tmp_path, "train")
    _check(*load_miniimagenet("train", root=tmp_path, image_size=32, cache_dir=tmp_path / "cache"), side=32)
    monkeypatch.setattr(miniimagenet_module, "_resize", lambda *a: pytest.fail("resized twice"))
    _check(*load_miniimagenet("train", root=tmp_path, image_size=32, cache_dir=tmp_path / "cache"), side=32)


def test_missing_files_name_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_miniimagenet("val", root=tmp_path)
    message = str(err.value)
    for expected in (
        "mini-imagenet-cache-val.pkl",
        "mini-imagenet-cache-val.npz",
        "val.csv",
        "images/",
        str(tmp_path / "miniimagenet"),
        "Ravi & Larochelle",
        "learn2learn",
    ):
        assert expected in message


def test_bad_contents(tmp_path):
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="must hold a dict with keys 'image_data' and 'class_dict', got list"):
        load_miniimagenet("train", root=tmp_path)
    image_data, class_dict = _rows()
    class_dict["n01"] = class_dict["n01"][:-1]
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": image_data, "class_dict": class_dict}, f)
    with pytest.raises(ValueError, match="same number of images .* got 5 to 6"):
        load_miniimagenet("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_miniimagenet("training", root=tmp_path)


def test_benchmark_miniimagenet(tmp_path):
    for split in ("train", "val", "test"):
        _write_pickle(tmp_path / "miniimagenet", split)
    tasks = benchmark("miniimagenet", ways=3, shots=2, queries=4, root=tmp_path)
    episode = tasks.test.sample(jax.random.key(0), 2)
    assert episode.support_x.shape == (2, 6, 84, 84, 3) and episode.query_y.shape == (2, 12)
    with pytest.raises(ValueError, match="split must be one of 'ravi'; got 'vinyals'"):
        benchmark("miniimagenet", ways=3, shots=2, queries=4, root=tmp_path, split="vinyals")


@pytest.mark.parametrize("suffix", [".pkl", ".npz"])
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_files_are_named(tmp_path, suffix, damage):
    image_data, class_dict = _rows()
    path = tmp_path / f"mini-imagenet-cache-train{suffix}"
    if suffix == ".pkl":
        _write_pickle(tmp_path, "train")
    else:
        labels = np.empty(len(image_data), dtype="<U3")
        for name, rows in class_dict.items():
            labels[rows] = name
        np.savez(path, image_data=image_data, labels=labels)
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[: path.stat().st_size // 2])
    expected = f"{path} is empty (0 bytes)" if damage == "empty" else f"{path} is truncated or corrupt ("
    with pytest.raises(ValueError) as err:
        load_miniimagenet("train", root=tmp_path)
    assert str(err.value).startswith(expected), str(err.value)
    if suffix == ".pkl":
        assert "Delete it and get a fresh copy: miniImageNet" in str(err.value)
