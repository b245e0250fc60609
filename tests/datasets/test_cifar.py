"""CIFAR-FS and FC100 on a tiny CIFAR-100 written in the official pickle layout (4 images per class)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import cache_of
from metajax.datasets import CIFAR_FS_CLASSES, FC100_SUPERCLASSES, load_cifar_fs, load_fc100
from metajax.datasets import cifar as cifar_module
from metajax.datasets._files import KnownFile
from metajax.tasks import benchmark

# CIFAR-100's coarse_label_names, in label order (the official meta file).
COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip
# CIFAR-100's fine_label_names, in label order (alphabetical; the official meta file).
FINE = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def _coarse_of(fine: int) -> int:
    return fine // 5  # a made-up grouping: five fine classes per superclass


def _part(test: bool) -> dict:
    """A ``train`` / ``test`` pickle: rows interleave classes; pixels encode (fine label, example, position)."""
    per_class = TEST_PER_CLASS if test else TRAIN_PER_CLASS
    rows = [(f, e + (TRAIN_PER_CLASS if test else 0)) for e in range(per_class) for f in range(100)]
    data = np.zeros((len(rows), 3, 32, 32), np.uint8)  # channels first, as CIFAR stores its rows
    for r, (f, e) in enumerate(rows):
        data[r, 0], data[r, 1] = f, e
        data[r, 2] = (np.arange(32 * 32) % 251).reshape(32, 32)  # row-major position: checks the transpose
    fine = [f for f, _ in rows]
    return {"data": data.reshape(len(rows), 3072), "fine_labels": fine, "coarse_labels": [_coarse_of(f) for f in fine]}


def _files() -> dict[str, bytes]:
    meta = {"fine_label_names": list(FINE), "coarse_label_names": list(COARSE)}
    return {
        name: pickle.dumps(c, protocol=2)
        for name, c in (("train", _part(False)), ("test", _part(True)), ("meta", meta))
    }


def _trust(monkeypatch, name: str, raw: bytes) -> None:
    """Accept ``raw`` as the official release of ``name`` (the real md5s fit only the real files)."""
    known = (KnownFile(len(raw), "md5", hashlib.md5(raw).hexdigest(), "test copy"),)
    monkeypatch.setitem(cifar_module._KNOWN, name, known)


@pytest.fixture
def extracted(tmp_path, monkeypatch) -> Path:
    """``root/cifar100/cifar-100-python/{train,test,meta}``."""
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, raw in _files().items():
        (folder / name).write_bytes(raw)
        _trust(monkeypatch, name, raw)
    return tmp_path


def _archive(path: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, raw in _files().items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _check(data, names: list[str]) -> None:
    """Each class holds its 3 training images, then its test image, pixels where CIFAR's layout puts them."""
    assert data.names == tuple(names)
    assert data.images.shape == (len(names), 4, 32, 32, 3) and data.images.dtype == np.uint8
    position = (np.arange(32 * 32) % 251).reshape(32, 32)
    for c, name in enumerate(names):
        np.testing.assert_array_equal(data.images[c, :, :, :, 0], FINE.index(name))
        np.testing.assert_array_equal(data.images[c, :, 0, 0, 1], np.arange(4))
        np.testing.assert_array_equal(data.images[c, :, :, :, 2], np.broadcast_to(position, (4, 32, 32)))


def test_cifar_fs_splits_from_the_extracted_folder(extracted):
    sizes = {}
    for split in ("train", "val", "test"):
        data = load_cifar_fs(split, root=extracted, download=False)
        _check(data, sorted(CIFAR_FS_CLASSES[split]))
        sizes[split] = len(data.names)
    assert sizes == {"train": 64, "val": 16, "test": 20}


def test_cifar_fs_lists_partition_cifar100():
    names = [name for split in ("train", "val", "test") for name in CIFAR_FS_CLASSES[split]]
    assert sorted(names) == list(FINE)  # every CIFAR-100 class, once
    assert {"whale", "man", "rocket"} <= set(CIFAR_FS_CLASSES["test"]) and "shark" in CIFAR_FS_CLASSES["val"]


def test_fc100_superclasses_are_tadams():
    indices = {split: sorted(COARSE.index(name) for name in names) for split, names in FC100_SUPERCLASSES.items()}
    assert indices == {
        "train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19],
        "val": [8, 11, 13, 16],
        "test": [0, 7, 12, 14],
    }


def test_fc100_from_the_archive_takes_every_fine_class_of_its_superclasses(tmp_path, monkeypatch):
    _trust(monkeypatch, "cifar-100-python.tar.gz", _archive(tmp_path / "cifar-100-python.tar.gz"))
    for split, size in (("train", 60), ("val", 20), ("test", 20)):
        wanted = {COARSE.index(name) for name in FC100_SUPERCLASSES[split]}
        expected = [FINE[f] for f in range(100) if _coarse_of(f) in wanted]
        data = load_fc100(split, root=tmp_path, download=False)
        assert len(data.names) == size
        _check(data, expected)


def test_a_benchmark_reads_and_verifies_the_archive_once_per_process(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    _trust(monkeypatch, archive.name, _archive(archive))
    opened, verified = [], []
    tar_open, verify = tarfile.open, cifar_module.verify_file
    monkeypatch.setattr(tarfile, "open", lambda name, *a, **k: opened.append(name) or tar_open(name, *a, **k))
    monkeypatch.setattr(cifar_module, "verify_file", lambda path, *a: verified.append(path) or verify(path, *a))
    cifar_fs = benchmark("cifar-fs", ways=2, shots=1, queries=1, root=tmp_path)  # its three splits
    fc100 = benchmark("fc100", ways=2, shots=1, queries=1, root=tmp_path)  # the same archive: not read again
    assert opened == verified == [archive]
    assert [len(part.images) for part in (*cifar_fs, *fc100)] == [64, 16, 20, 60, 20, 20]
    _check(load_cifar_fs("val", root=tmp_path), [n for n in FINE if n in CIFAR_FS_CLASSES["val"]])  # from memory
    assert opened == [archive]
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))  # replaced: read again
    load_cifar_fs("val", root=tmp_path)
    assert opened == verified == [archive, archive]


def test_other_sizes_are_resized_and_cached(extracted, tmp_path, monkeypatch):
    data = load_cifar_fs("val", root=extracted, image_size=8, cache_dir=tmp_path / "cache")
    assert data.images.shape == (16, 4, 8, 8, 3)
    labels = np.asarray([FINE.index(n) for n in data.names])
    np.testing.assert_array_equal(data.images[..., 0], np.broadcast_to(labels[:, None, None, None], (16, 4, 8, 8)))
    assert (cache_of(tmp_path / "cache", "cifar100", extracted) / "cifar-fs-val_8px.npz").is_file()
    monkeypatch.setattr(cifar_module, "_read", lambda *a: pytest.fail("read twice"))
    again = load_cifar_fs("val", root=extracted, image_size=8, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.images, data.images)


def test_missing_cifar100_names_the_files_the_folders_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_fc100("test", root=tmp_path, download=False)
    message = str(err.value)
    for expected in (
        "CIFAR-100 not found in",
        str(tmp_path / "cifar100"),
        "cifar-100-python/ (with train, test and meta)",
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "download=False",
    ):
        assert expected in message, message


def test_failed_cifar100_download_is_reported(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"Downloading https://www.cs.toronto.edu/\S+ failed"):
        load_cifar_fs("train", root=tmp_path)
    assert not list(tmp_path.rglob("*.tar.gz"))


def test_cifar100_files_other_than_the_official_ones_are_refused(extracted, monkeypatch):
    monkeypatch.setattr(
        cifar_module, "_KNOWN", {**cifar_module._KNOWN, "meta": (KnownFile(None, "md5", "0" * 32, "x"),)}
    )
    with pytest.raises(ValueError, match=r"cifar-100-python/meta is corrupt or an unknown version") as err:
        load_cifar_fs("train", root=extracted)
    assert "www.cs.toronto.edu" in str(err.value)
    (extracted / "cifar100" / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 file \S+test not found next to"):
        load_cifar_fs("train", root=extracted)


def test_cifar100_pickles_of_another_layout_are_named(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    files = {**_files(), "meta": pickle.dumps({"label_names": ["airplane"]})}  # CIFAR-10's meta
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
        _trust(monkeypatch, name, raw)
    with pytest.raises(ValueError, match=r"meta \(meta\) must hold a CIFAR-100 dict with keys fine_label_names"):
        load_cifar_fs("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of 'train', 'val', 'test'; got 'validation'"):
        load_fc100("validation", root=tmp_path)


def test_a_class_short_of_images_is_named():
    fine = np.array([0, 0, 1, 1, 1, 2, 2, 2])  # class "baby" (label 2) is fine; "apple" (0) holds 2 of 3
    data = cifar_module._Cifar100(np.zeros((8, 32, 32, 3), np.uint8), fine, fine, FINE, COARSE)
    with pytest.raises(ValueError, match="class 'apple' holds 2, others up to 3"):
        cifar_module._select(data, ["apple", "aquarium_fish", "baby"])
