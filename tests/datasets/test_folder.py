"""Your own dataset: image folders ``root/<class>/<image>`` into arrays, then into a task distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metajax.datasets import ImageClasses, RaggedImageClasses, load_image_folder
from metajax.tasks import FewShot, RaggedFewShot, from_images


def _write(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    """Uniform images: red = 10 * (class rank by name), green = the image's rank by file name."""
    for c, name in enumerate(sorted(counts)):
        (root / name).mkdir(parents=True)
        for k in range(counts[name]):
            Image.new("RGB", size, (10 * c, k, 3)).save(root / name / f"img{k:02d}.png")
    (root / "notes.txt").write_text("not a class")  # files beside the class folders are ignored
    (root / sorted(counts)[0] / "README").write_text("not an image")  # and files without an image suffix


def test_folders_become_classes_in_name_order(tmp_path):
    _write(tmp_path, {"wren": 3, "albatross": 5, "jay": 4})
    data = load_image_folder(tmp_path, image_size=6)
    assert isinstance(data, RaggedImageClasses) and data.names == ("albatross", "jay", "wren")
    np.testing.assert_array_equal(data.counts, [5, 4, 3])
    assert data.images.shape == (12, 6, 6, 3) and data.images.dtype == np.uint8
    expected = [(10 * c, k, 3) for c, n in enumerate((5, 4, 3)) for k in range(n)]
    np.testing.assert_array_equal(data.images[:, 2, 3], expected)
    gray = load_image_folder(tmp_path, image_size=6, mode="L")
    assert gray.images.shape == (12, 6, 6, 1)


def test_unequal_classes_give_a_ragged_task_and_equal_ones_a_fewshot(tmp_path):
    _write(tmp_path / "ragged", {"a": 3, "b": 5, "c": 4})
    _write(tmp_path / "equal", {"a": 4, "b": 4, "c": 4})
    ragged = from_images(load_image_folder(tmp_path / "ragged", image_size=4), ways=2, shots=1, queries=2)
    assert isinstance(ragged, RaggedFewShot) and ragged.names == ("a", "b", "c") and ragged.max_count == 5
    np.testing.assert_array_equal(ragged.offsets, [0, 3, 8])
    equal = from_images(load_image_folder(tmp_path / "equal", image_size=4), ways=3, shots=2, queries=2)
    assert isinstance(equal, FewShot) and equal.images.shape == (3, 4, 4, 4, 3)
    classes = ImageClasses(np.zeros((6, 20, 4, 4, 1), np.uint8), tuple("abcdef"))
    default = from_images(classes)
    assert isinstance(default, FewShot) and (default.ways, default.shots, default.queries) == (5, 1, 15)


def test_a_class_with_too_few_images_is_refused_by_name(tmp_path):
    _write(tmp_path, {"albatross": 6, "jay": 2, "wren": 6})
    data = load_image_folder(tmp_path, image_size=4)
    with pytest.raises(ValueError, match=r"at least shots \+ queries = 3 images.*class 1 \('jay'\) has 2"):
        from_images(data, ways=2, shots=1, queries=2)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root must be a folder of class folders \(root/<class>/<image>\)"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds no class folders; expected root/<class>/<image>"):
        load_image_folder(tmp_path)
    _write(tmp_path, {"a": 2})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken.jpg is not a readable image \(UnidentifiedImageError"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="mode must be one of 'RGB', 'L'; got 'CMYK'"):
        load_image_folder(tmp_path, mode="CMYK")
