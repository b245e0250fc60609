"""FewShot: episodes drawn on the device, checked through images whose pixels encode (class, example)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_deterministic_per_key, assert_one_rotation_per_class
from metajax.tasks import FewShot, TaskDistribution

CLASSES, EXAMPLES, SIDE = 12, 10, 3


def _id_images() -> np.ndarray:
    """``[12, 10, 3, 3, 3]``: channel 0 = class id, channel 1 = example id, channel 2 marks the top-left corner."""
    images = np.zeros((CLASSES, EXAMPLES, SIDE, SIDE, 3), np.uint8)
    images[..., 0] = np.arange(CLASSES)[:, None, None, None]
    images[..., 1] = np.arange(EXAMPLES)[None, :, None, None]
    images[:, :, 0, 0, 2] = 200
    return images


def _ids(x: jax.Array) -> np.ndarray:
    """``[..., 2]`` (class, example) of each image ``[..., H, W, C]`` (uniform over the image)."""
    return np.rint(np.asarray(x)[..., 1, 1, :2] * 255).astype(int)


@jax.jit(static_argnums=2)
def draw(task: FewShot, key: jax.Array, num_tasks: int):
    """``task.sample`` compiled: faster than op-by-op dispatch."""
    return task.sample(key, num_tasks)


@pytest.fixture(scope="module")
def images():
    return _id_images()


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 15 - 6), (3, 4, 6), (12, 2, 2)])
def test_episode_contents(images, ways, shots, queries):
    task = FewShot(images, ways=ways, shots=shots, queries=queries)
    episode = draw(task, jax.random.key(0), 16)
    assert episode.support_x.shape == (16, ways * shots, SIDE, SIDE, 3)
    assert episode.query_x.shape == (16, ways * queries, SIDE, SIDE, 3)
    assert episode.support_y.shape == (16, ways * shots) and episode.query_y.shape == (16, ways * queries)
    assert episode.support_x.dtype == jnp.float32 and episode.support_y.dtype == jnp.int32
    assert float(episode.support_x.min()) >= 0 and float(episode.support_x.max()) <= 1
    support, query = _ids(episode.support_x), _ids(episode.query_x)
    for t in range(16):
        s_y, q_y = np.asarray(episode.support_y[t]), np.asarray(episode.query_y[t])
        np.testing.assert_array_equal(np.bincount(s_y, minlength=ways), shots)
        np.testing.assert_array_equal(np.bincount(q_y, minlength=ways), queries)
        label_class = {}
        for (c, _), label in zip(np.concatenate([support[t], query[t]]), np.concatenate([s_y, q_y]), strict=True):
            assert label_class.setdefault(label, c) == c  # one class per label, in support and query alike
        assert len(set(label_class.values())) == ways  # distinct classes
        pairs = [tuple(p) for p in np.concatenate([support[t], query[t]])]
        assert len(set(pairs)) == len(pairs)  # no image twice: support and query are disjoint


def test_labels_are_a_random_permutation(images):
    episode = draw(FewShot(images, ways=5, shots=1, queries=1), jax.random.key(1), 200)
    order = _ids(episode.support_x)[..., 0]  # class of label 0..4, per task
    assert not np.all(np.diff(order, axis=1) > 0)  # not sorted by class id
    assert len(np.unique(order[:, 0])) == CLASSES  # any class can get label 0
    assert len(np.unique(order)) == CLASSES


def test_deterministic_per_key(images):
    assert_deterministic_per_key(draw, FewShot(images, ways=5, shots=2, queries=3))


def test_jit_compiles_once(images):
    task = FewShot(images, ways=5, shots=1, queries=2)
    traces = []

    @jax.jit
    def step(task, key):
        traces.append(None)
        return task.sample(key, 8)

    first, *_ = [step(task, jax.random.key(k)) for k in (3, 4, 5)]
    # Other images of the same shape are a new input, not a new program.
    step(FewShot(images[::-1], ways=5, shots=1, queries=2), jax.random.key(3))
    assert len(traces) == 1
    # A closed-over task gives the same episodes.
    closed = jax.jit(lambda key: task.sample(key, 8))
    jax.tree.map(np.testing.assert_array_equal, first, closed(jax.random.key(3)))


def test_is_a_pytree_with_images_as_only_leaf(images):
    task = FewShot(images, ways=5, shots=1, queries=2, normalize=([0.5] * 3, [0.25] * 3))
    leaves, treedef = jax.tree.flatten(task)
    assert len(leaves) == 1 and leaves[0].shape == images.shape
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert dataclasses.astuple(rebuilt)[1:] == dataclasses.astuple(task)[1:]
    assert task == task and task != FewShot(images, ways=5, shots=1, queries=2)  # identity equality
    assert isinstance(task, TaskDistribution) and task.kind == "classification"
    assert "images" not in repr(task)


def test_augment_rotations(images):
    task = FewShot(images, ways=4, shots=2, queries=3, augment_rotations=True)
    assert_one_rotation_per_class(draw(task, jax.random.key(2), 64), channel=2)


def test_normalize(images):
    plain = draw(FewShot(images, ways=3, shots=1, queries=1), jax.random.key(0), 2)
    normed = FewShot(images, ways=3, shots=1, queries=1, normalize=((0.1, 0.2, 0.3), (2.0, 4.0, 0.5)))
    normed = draw(normed, jax.random.key(0), 2)
    expected = (np.asarray(plain.query_x) - np.array([0.1, 0.2, 0.3])) / np.array([2.0, 4.0, 0.5])
    np.testing.assert_allclose(normed.query_x, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ways=13, shots=1, queries=1), "ways must be at most the number of classes, 12 .* got ways=13"),
        (dict(ways=5, shots=6, queries=5), "shots \\+ queries must be at most the 10 examples .* shots=6, queries=5"),
        (dict(ways=0, shots=1, queries=1), "ways must be a positive integer, got 0"),
        (dict(ways=5, shots=1, queries=-1), "queries must be a positive integer, got -1"),
        (dict(ways=5, shots=1.5, queries=1), "shots must be a positive integer, got 1.5"),
        (dict(ways=5, shots=1, queries=1, normalize=((0.5,), (1.0,))), "normalize must be .* 3 values each"),
    ],
)
def test_bad_configuration(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FewShot(images, **kwargs)


def test_bad_images_and_num_tasks(images):
    with pytest.raises(ValueError, match="images must be a uint8 array .* got float32 \\(12, 10, 3, 3, 3\\)"):
        FewShot(images.astype(np.float32), ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="images must be a uint8 array .* got uint8 \\(12, 10, 3, 3\\)"):
        FewShot(images[..., 0], ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="augment_rotations needs square images, got H=3, W=2"):
        FewShot(images[:, :, :, :2], ways=2, shots=1, queries=1, augment_rotations=True)
    with pytest.raises(ValueError, match="num_tasks must be a positive integer, got 0"):
        FewShot(images, ways=2, shots=1, queries=1).sample(jax.random.key(0), 0)
