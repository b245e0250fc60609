"""Omniglot loader: counts, splits, rotations, cache, verification and error messages."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import urllib.error
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import cache_of
from metajax.datasets import cache_root, data_root, load_omniglot
from metajax.datasets import omniglot as omniglot_module
from metajax.datasets._files import KnownFile
from metajax.tasks import benchmark

VINYALS = {"vinyals-train": 1028, "vinyals-val": 172, "vinyals-test": 423, "vinyals-trainval": 1200}


def _zip_path(root: Path, part: str) -> Path:
    return next(p for p in (root / f"images_{part}.zip", root / "omniglot" / f"images_{part}.zip") if p.is_file())


@pytest.mark.parametrize(("split", "characters", "alphabets"), [("background", 964, 30), ("evaluation", 659, 20)])
def test_lake_sets(data_root, omniglot_cache, split, characters, alphabets):
    data = load_omniglot(split, root=data_root, cache_dir=omniglot_cache)
    assert data.images.shape == (characters, 20, 28, 28, 1)
    assert data.images.dtype == np.uint8
    assert len(data.names) == len(set(data.names)) == characters
    assert list(data.names) == sorted(data.names)
    assert all(name.split("/")[1].startswith("character") for name in data.names)
    assert len({name.split("/")[0] for name in data.names}) == alphabets
    # Strokes are bright on a dark background; LANCZOS gives intermediate grey levels.
    assert data.images.max() == 255 and np.median(data.images) == 0
    assert len(np.unique(data.images)) > 100


def test_vinyals_splits(data_root, omniglot_cache):
    loaded = {split: load_omniglot(split, root=data_root, cache_dir=omniglot_cache) for split in VINYALS}
    characters = {}
    for split, count in VINYALS.items():
        data = loaded[split]
        assert data.images.shape == (4 * count, 20, 28, 28, 1)
        lines = (data_root / "omniglot" / "splits" / "vinyals" / f"{split[8:]}.txt").read_text().split()
        assert list(data.names) == lines
        characters[split] = {name.rsplit("/", 1)[0] for name in data.names}
        assert len(characters[split]) == count
    train, val, test = characters["vinyals-train"], characters["vinyals-val"], characters["vinyals-test"]
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 1623
    assert characters["vinyals-trainval"] == train | val


def test_rotations_are_counter_clockwise_like_pil(data_root, omniglot_cache):
    data = load_omniglot("vinyals-train", root=data_root, cache_dir=omniglot_cache)
    assert data.names[:4] == tuple(f"{data.names[0][:-7]}/rot{d:03d}" for d in (0, 90, 180, 270))
    original = Image.fromarray(data.images[0, 3, :, :, 0])
    for turn in range(4):
        np.testing.assert_array_equal(data.images[turn, 3, :, :, 0], np.asarray(original.rotate(90 * turn)))
    # The unrotated class holds the same images as Lake's set.
    lake = load_omniglot("evaluation", root=data_root, cache_dir=omniglot_cache)
    np.testing.assert_array_equal(data.images[0], lake.images[lake.names.index(data.names[0][:-7])])


def test_second_load_reads_the_cache(data_root, omniglot_cache, monkeypatch):
    first = load_omniglot("background", root=data_root, cache_dir=omniglot_cache)
    files = sorted(p.name for p in cache_of(omniglot_cache, "omniglot", data_root).iterdir())
    assert "background_28px.npz" in files and not [f for f in files if f.startswith(".")]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the zip was decoded again")

    monkeypatch.setattr(omniglot_module, "_decode", no_decoding)
    second = load_omniglot("background", root=data_root, cache_dir=omniglot_cache, download=False)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.names == second.names


def test_env_var_gives_the_data_root(data_root, omniglot_cache, monkeypatch):
    monkeypatch.setenv("METAJAX_DATA", str(data_root))
    assert load_omniglot("evaluation", cache_dir=omniglot_cache).images.shape[0] == 659


def test_default_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("METAJAX_DATA", raising=False)
    monkeypatch.delenv("METAJAX_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_root() == tmp_path / ".cache" / "metajax"
    assert cache_root() == tmp_path / ".cache" / "metajax" / "cache"
    assert data_root("/x") == Path("/x")
    monkeypatch.setenv("METAJAX_DATA", "/data")
    monkeypatch.setenv("METAJAX_CACHE", "/cache")
    assert (data_root(), cache_root()) == (Path("/data"), Path("/cache"))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_zip_is_a_clear_error(data_root, tmp_path, damage):
    raw = bytearray(_zip_path(data_root, "background").read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[:-100]
    (tmp_path / "images_background.zip").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt") as err:
        load_omniglot("background", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    assert "68d2efa1b9178cc56df9314c21c6e718" in str(err.value)
    assert "github.com/brendenlake/omniglot" in str(err.value)
    assert not (cache_of(tmp_path / "cache", "omniglot", tmp_path) / "background_28px.npz").exists()


def test_missing_zip_names_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_omniglot("evaluation", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    assert "images_evaluation.zip" in message and str(tmp_path / "omniglot") in message
    assert "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip" in message


def test_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError, match="Downloading .*images_background.zip failed .*no network"):
        load_omniglot("background", root=tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "omniglot").iterdir())  # no partial file left


def test_corrupt_download_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: io.BytesIO(b"not a zip"))
    with pytest.raises(ValueError, match="corrupt"):
        load_omniglot("background", root=tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "omniglot").iterdir())


def test_missing_split_file_names_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_omniglot("vinyals-val", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    assert "val.txt" in message and "jakesnell/prototypical-networks" in message
    assert str(tmp_path / "omniglot" / "splits" / "vinyals") in message


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split must be one of .*'nope'"):
        load_omniglot("nope", root=tmp_path)
    with pytest.raises(ValueError, match="image_size must be a positive integer, got 0"):
        load_omniglot(root=tmp_path, image_size=0)


def _fake_zip(path: Path, characters: dict[str, int]) -> None:
    """An official-layout zip: drawing ``k`` of every character is a black square of side ``k + 1``."""
    with zipfile.ZipFile(path, "w") as archive:
        for alphabet, count in characters.items():
            for c in range(count):
                for k in reversed(range(20)):  # stored out of order on purpose
                    image = np.ones((105, 105), bool)
                    image[: k + 1, : k + 1] = False
                    png = io.BytesIO()
                    Image.fromarray(image).save(png, format="PNG")
                    name = f"images_background/{alphabet}/character{c + 1:02d}/{c:04d}_{k + 1:02d}.png"
                    archive.writestr(name, png.getvalue())


@pytest.fixture
def fake_root(tmp_path, monkeypatch) -> Path:
    """A root with a tiny Omniglot-layout background zip that the verifier accepts."""
    path = tmp_path / "data" / "omniglot" / "images_background.zip"
    path.parent.mkdir(parents=True)
    _fake_zip(path, {"Beta": 2, "Alpha": 1})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    known = (KnownFile(path.stat().st_size, "sha256", digest, "test"),)
    monkeypatch.setitem(omniglot_module._KNOWN, "background", known)
    return tmp_path / "data"


def test_two_data_roots_in_one_process_have_their_own_caches(tmp_path, monkeypatch):
    roots, characters, known = [tmp_path / "a", tmp_path / "b"], [{"Alpha": 1}, {"Alpha": 2, "Beta": 1}], []
    for root, drawn in zip(roots, characters, strict=True):
        root.mkdir()
        _fake_zip(root / "images_background.zip", drawn)
        digest = hashlib.sha256((root / "images_background.zip").read_bytes()).hexdigest()
        known.append(KnownFile((root / "images_background.zip").stat().st_size, "sha256", digest, "test"))
    monkeypatch.setitem(omniglot_module._KNOWN, "background", tuple(known))
    cache = tmp_path / "cache"
    first = [load_omniglot("background", root=root, cache_dir=cache, download=False) for root in roots]
    expected = [("Alpha/character01",), ("Alpha/character01", "Alpha/character02", "Beta/character01")]
    assert [data.names for data in first] == expected and [len(data.images) for data in first] == [1, 3]
    monkeypatch.setattr(omniglot_module, "_decode", lambda *a: pytest.fail("decoded again"))
    for root, data in zip(roots, first, strict=True):  # each from its own cache
        assert (cache_of(cache, "omniglot", root) / "background_28px.npz").is_file()
        again = load_omniglot("background", root=root, cache_dir=cache, download=False)
        assert again.names == data.names
        np.testing.assert_array_equal(again.images, data.images)


@pytest.mark.parametrize("image_size", [None, 84, 28])
def test_decoding_sizes_order_and_polarity(fake_root, tmp_path, image_size):
    data = load_omniglot("background", root=fake_root, image_size=image_size, cache_dir=tmp_path / "cache")
    side = image_size or 105
    assert data.images.shape == (3, 20, side, side, 1)
    assert data.names == ("Alpha/character01", "Beta/character01", "Beta/character02")
    assert (cache_of(tmp_path / "cache", "omniglot", fake_root) / f"background_{side}px.npz").is_file()
    if image_size is None:
        expected = np.zeros((20, 105, 105), np.uint8)
        for k in range(20):
            expected[k, : k + 1, : k + 1] = 255
        np.testing.assert_array_equal(data.images[1, :, :, :, 0], expected)
    else:
        ink = data.images.astype(float).sum(axis=(2, 3, 4))
        assert np.all(np.diff(ink, axis=1) > 0)  # drawings in file-name order: growing squares


def test_unreadable_cache_is_rebuilt(fake_root, tmp_path):
    cache = cache_of(tmp_path / "cache", "omniglot", fake_root) / "background_28px.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="Ignoring unreadable cache"):
        data = load_omniglot("background", root=fake_root, cache_dir=tmp_path / "cache")
    assert data.images.shape == (3, 20, 28, 28, 1)
    np.testing.assert_array_equal(load_omniglot("background", root=fake_root, cache_dir=tmp_path / "cache")[0], data[0])


def test_malformed_split_file(tmp_path):
    folder = tmp_path / "splits" / "vinyals"
    folder.mkdir(parents=True)
    (folder / "test.txt").write_text("Latin/character01/rot000\nLatin/character01/rot045\n")
    with pytest.raises(ValueError, match="test.txt, line 2: expected 'Alphabet/characterNN/rotDDD'"):
        load_omniglot("vinyals-test", root=tmp_path, cache_dir=tmp_path / "cache", download=False)


def test_download_lands_in_root(fake_root, tmp_path, monkeypatch):
    payload = (fake_root / "omniglot" / "images_background.zip").read_bytes()
    root = tmp_path / "fresh"
    requested = []

    def serve(url, timeout):
        requested.append((url, timeout))
        return io.BytesIO(payload)

    monkeypatch.setattr("urllib.request.urlopen", serve)
    data = load_omniglot("background", root=root, cache_dir=tmp_path / "cache2", timeout=7.0)
    assert data.images.shape == (3, 20, 28, 28, 1)
    assert requested == [("https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip", 7.0)]
    assert (root / "omniglot" / "images_background.zip").read_bytes() == payload


def test_benchmark_omniglot(data_root, omniglot_cache):
    tasks = benchmark("omniglot", ways=5, shots=1, queries=3, root=data_root, cache_dir=omniglot_cache)
    assert (tasks.train.num_classes, tasks.val.num_classes, tasks.test.num_classes) == (4112, 688, 1692)
    episode = jax.jit(lambda t, k: t.sample(k, 2))(tasks.train, jax.random.key(0))
    assert episode.support_x.shape == (2, 5, 28, 28, 1) and episode.query_x.shape == (2, 15, 28, 28, 1)
    lake = benchmark("omniglot", ways=20, shots=1, queries=1, split="lake", root=data_root, cache_dir=omniglot_cache)
    assert lake.val is None and (lake.train.num_classes, lake.test.num_classes) == (964, 659)


def test_shared_copy_layout_accepted(data_root, tmp_path):
    # The same verified zip found directly in root (not root/omniglot) is accepted too.
    shutil.copy(_zip_path(data_root, "evaluation"), tmp_path / "images_evaluation.zip")
    assert omniglot_module._zip_file("evaluation", tmp_path, download=False, timeout=1.0) == (
        tmp_path / "images_evaluation.zip"
    )


def test_empty_data_folder_names_the_zips_the_root_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_omniglot("background", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    for expected in (
        "images_background.zip and images_evaluation.zip",
        str(tmp_path / "omniglot"),
        "$METAJAX_DATA",
        "root= argument (--data-root of metajax train)",
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    ):
        assert expected in message


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_cache_is_named_and_rebuilt(fake_root, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    good = load_omniglot("background", root=fake_root, cache_dir=cache_dir)
    cache = cache_of(cache_dir, "omniglot", fake_root) / "background_28px.npz"
    cache.write_bytes(b"" if damage == "empty" else cache.read_bytes()[: cache.stat().st_size // 2])
    expected = "is empty (0 bytes)" if damage == "empty" else "is truncated or corrupt (BadZipFile"
    with pytest.warns(UserWarning, match=f"Ignoring unreadable cache: {re.escape(str(cache))} {re.escape(expected)}"):
        data = load_omniglot("background", root=fake_root, cache_dir=cache_dir)
    np.testing.assert_array_equal(data.images, good.images)
    with np.load(cache) as rebuilt:  # written again, whole
        np.testing.assert_array_equal(rebuilt["images"], good.images)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left


def test_damaged_cache_without_its_source_is_refused_with_the_path(tmp_path):
    cache = cache_of(tmp_path / "cache", "omniglot", tmp_path / "data") / "background_28px.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"")
    with pytest.warns(UserWarning, match="Ignoring unreadable cache"), pytest.raises(FileNotFoundError) as err:
        load_omniglot("background", root=tmp_path / "data", cache_dir=tmp_path / "cache", download=False)
    message = str(err.value)
    assert message.startswith(f"The cache {cache} is empty (0 bytes), and it cannot be rebuilt: Omniglot file")
    assert f"Then delete {cache}; it is rebuilt on the next load." in message
