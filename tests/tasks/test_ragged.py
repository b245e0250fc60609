"""RaggedFewShot: episodes from classes of 3 to 20 images, checked through images whose pixels encode their row."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import Flatten, assert_deterministic_per_key, assert_one_rotation_per_class
from metajax.tasks import RaggedFewShot, TaskDistribution

# Classes out of row order, with rows 3, 31, 32, 38 and 39 in no class.
OFFSETS, COUNTS = (11, 0, 33, 4), (20, 3, 5, 7)
TOTAL, SIDE, SMALLEST = 40, 3, 1  # class 1 holds 3 images


def _id_images() -> np.ndarray:
    """``[40, 3, 3, 2]``: channel 0 = row index (uniform over the image), channel 1 marks the top-left corner."""
    images = np.zeros((TOTAL, SIDE, SIDE, 2), np.uint8)
    images[..., 0] = np.arange(TOTAL)[:, None, None]
    images[:, 0, 0, 1] = 200
    return images


def _class_of_row() -> dict[int, int]:
    return {row: c for c, (o, n) in enumerate(zip(OFFSETS, COUNTS, strict=True)) for row in range(o, o + n)}


def _rows(x: jax.Array) -> np.ndarray:
    """``[...]`` the row of each image ``[..., H, W, C]``."""
    return np.rint(np.asarray(x)[..., 1, 1, 0] * 255).astype(int)


@jax.jit(static_argnums=2)
def draw(task: RaggedFewShot, key: jax.Array, num_tasks: int):
    """``task.sample`` compiled, the images an argument."""
    return task.sample(key, num_tasks)


@pytest.fixture(scope="module")
def images():
    return _id_images()


def _task(images, **kwargs) -> RaggedFewShot:
    return RaggedFewShot(images, np.array(OFFSETS), np.array(COUNTS), **kwargs)


@pytest.mark.parametrize(("ways", "shots", "queries"), [(2, 1, 2), (4, 1, 2), (3, 2, 1)])
def test_episode_contents(images, ways, shots, queries):
    episode = draw(_task(images, ways=ways, shots=shots, queries=queries), jax.random.key(0), 32)
    assert episode.support_x.shape == (32, ways * shots, SIDE, SIDE, 2)
    assert episode.query_x.shape == (32, ways * queries, SIDE, SIDE, 2)
    assert episode.support_y.shape == (32, ways * shots) and episode.query_y.shape == (32, ways * queries)
    assert episode.support_x.dtype == jnp.float32 and episode.support_y.dtype == jnp.int32
    class_of = _class_of_row()
    support, query = _rows(episode.support_x), _rows(episode.query_x)
    for t in range(32):
        s_y, q_y = np.asarray(episode.support_y[t]), np.asarray(episode.query_y[t])
        np.testing.assert_array_equal(s_y, np.repeat(np.arange(ways), shots))  # class-major
        np.testing.assert_array_equal(q_y, np.repeat(np.arange(ways), queries))
        rows = np.concatenate([support[t], query[t]])
        assert all(row in class_of for row in rows)  # never a row outside every class
        label_class = {}
        for row, label in zip(rows, np.concatenate([s_y, q_y]), strict=True):
            assert label_class.setdefault(label, class_of[row]) == class_of[row]  # the class its label names
        assert len(set(label_class.values())) == ways  # distinct classes
        assert len(set(rows)) == len(rows)  # support and query disjoint


def test_every_row_of_each_class_is_reached(images):
    episode = draw(_task(images, ways=4, shots=1, queries=2), jax.random.key(1), 300)
    class_of = _class_of_row()
    for x in (episode.support_x, episode.query_x):
        reached = set(_rows(x).ravel())
        assert reached == set(class_of)  # all 3 rows of the smallest class, all 20 of the largest
    counts = np.bincount(_rows(episode.support_x).ravel(), minlength=TOTAL)
    smallest = counts[OFFSETS[SMALLEST] : OFFSETS[SMALLEST] + COUNTS[SMALLEST]]
    assert smallest.min() > 300 / 3 * 0.7  # each of its rows the support image about a third of the time


def test_labels_are_a_random_permutation(images):
    episode = draw(_task(images, ways=2, shots=1, queries=1), jax.random.key(2), 200)
    class_of = _class_of_row()
    order = np.vectorize(class_of.get)(_rows(episode.support_x))  # class of label 0, 1 per task
    assert set(order[:, 0]) == set(order[:, 1]) == {0, 1, 2, 3}  # any class can get any label
    assert not np.all(order[:, 0] < order[:, 1])


def test_deterministic_per_key(images):
    assert_deterministic_per_key(draw, _task(images, ways=3, shots=1, queries=2))


def test_jit_compiles_once_and_vmaps_over_keys(images):
    task = _task(images, ways=3, shots=1, queries=2)
    traces = []

    @jax.jit
    def step(task, key):
        traces.append(None)
        return task.sample(key, 2)

    keys = jax.random.split(jax.random.key(3), 3)
    singles = [step(task, k) for k in keys]
    # Other images, offsets and counts of the same shapes (and largest class) are new inputs, not a new program.
    step(
        RaggedFewShot(images[::-1], np.array(OFFSETS[::-1]), np.array(COUNTS[::-1]), ways=3, shots=1, queries=2),
        keys[0],
    )
    assert len(traces) == 1
    batched = jax.jit(jax.vmap(lambda task, key: task.sample(key, 2), in_axes=(None, 0)))(task, keys)
    for i, single in enumerate(singles):
        jax.tree.map(lambda one, many, i=i: np.testing.assert_array_equal(one, many[i]), single, batched)


def test_is_a_pytree_with_the_arrays_as_leaves(images):
    task = _task(images, ways=2, shots=1, queries=2, names=("a", "b", "c", "d"), normalize=((0.5,) * 2, (0.25,) * 2))
    leaves, treedef = jax.tree.flatten(task)
    assert [leaf.shape for leaf in leaves] == [images.shape, (4,), (4,)]
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert dataclasses.astuple(rebuilt)[3:] == dataclasses.astuple(task)[3:]
    assert task.max_count == 20 and task.num_classes == 4 and task.names == ("a", "b", "c", "d")
    assert isinstance(task, TaskDistribution) and task.kind == "classification"
    assert task == task and task != _task(images, ways=2, shots=1, queries=2)  # identity equality
    assert "images" not in repr(task)


def test_from_classes_concatenates_in_order(images):
    classes = [images[o : o + n] for o, n in zip(OFFSETS, COUNTS, strict=True)]
    task = RaggedFewShot.from_classes(classes, names=["w", "x", "y", "z"], ways=3, shots=1, queries=2)
    np.testing.assert_array_equal(task.images, np.concatenate(classes))
    np.testing.assert_array_equal(task.offsets, [0, 20, 23, 28])
    np.testing.assert_array_equal(task.counts, COUNTS)
    assert task.names == ("w", "x", "y", "z")
    # The same classes in the same order: the same episodes as the hand-built task, image for image.
    a, b = draw(task, jax.random.key(4), 8), draw(_task(images, ways=3, shots=1, queries=2), jax.random.key(4), 8)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_augment_rotations_and_normalize(images):
    task = _task(images, ways=3, shots=1, queries=2, augment_rotations=True)
    assert_one_rotation_per_class(draw(task, jax.random.key(5), 64), channel=1)
    plain = draw(_task(images, ways=3, shots=1, queries=1), jax.random.key(0), 2)
    normed = draw(_task(images, ways=3, shots=1, queries=1, normalize=((0.1, 0.2), (2.0, 0.5))), jax.random.key(0), 2)
    expected = (np.asarray(plain.query_x) - np.array([0.1, 0.2])) / np.array([2.0, 0.5])
    np.testing.assert_allclose(normed.query_x, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("arrays", "kwargs", "message"),
    [
        (
            (OFFSETS, COUNTS),
            dict(ways=2, shots=2, queries=2, names=("a", "b", "c", "d")),
            "every class needs at least shots \\+ queries = 4 images, so support and query stay disjoint; "
            "class 1 \\('b'\\) has 3\\. Drop those classes",
        ),
        ((OFFSETS, COUNTS), dict(ways=2, shots=3, queries=3), "= 6 images.* class 1 has 3, class 2 has 5\\."),
        (
            (OFFSETS, COUNTS),
            dict(ways=5, shots=1, queries=1),
            "ways must be at most the number of classes, 4; got ways=5",
        ),
        (
            ((11, 0, 33, 6), COUNTS),
            dict(ways=2, shots=1, queries=1),
            "offsets and counts must give disjoint row ranges; class 3 \\(rows 6\\.\\.12\\) overlaps class 0 "
            "\\(rows 11\\.\\.30\\)",
        ),
        (
            ((11, 0, 36, 4), COUNTS),
            dict(ways=2, shots=1, queries=1),
            "offsets and counts must give row ranges inside the 40 images; class 2 has offsets\\[2\\]=36, "
            "counts\\[2\\]=5",
        ),
        (
            ((-1, 0, 33, 4), COUNTS),
            dict(ways=2, shots=1, queries=1),
            "inside the 40 images; class 0 has offsets\\[0\\]=-1",
        ),
        (
            ((11, 0, 33), COUNTS),
            dict(ways=2, shots=1, queries=1),
            "offsets and counts must be 1-D with one entry per class .* got shapes \\(3,\\) and \\(4,\\)",
        ),
        (
            ((11.0, 0.0, 33.0, 4.0), COUNTS),
            dict(ways=2, shots=1, queries=1),
            "offsets must be a 1-D integer array, one entry per class; got float64 \\(4,\\)",
        ),
        (
            (OFFSETS, COUNTS),
            dict(ways=2, shots=1, queries=1, names=("a",)),
            "names must hold one name per class, 4; got 1",
        ),
        ((OFFSETS, COUNTS), dict(ways=2, shots=0, queries=1), "shots must be a positive integer, got 0"),
    ],
)
def test_bad_configuration(images, arrays, kwargs, message):
    offsets, counts = (np.array(a) for a in arrays)
    with pytest.raises(ValueError, match=message):
        RaggedFewShot(images, offsets, counts, **kwargs)


def test_bad_images_and_classes(images):
    with pytest.raises(
        ValueError, match="images must be a uint8 array \\[total, H, W, C\\], got float32 \\(40, 3, 3, 2\\)"
    ):
        _task(images.astype(np.float32), ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="augment_rotations needs square images, got H=3, W=2"):
        _task(images[:, :, :2], ways=2, shots=1, queries=1, augment_rotations=True)
    with pytest.raises(
        ValueError, match="classes\\[1\\] must be a uint8 array .* H, W, C = \\(3, 3, 2\\) .* \\(4, 3, 3\\)"
    ):
        RaggedFewShot.from_classes([images[:3], images[:4, ..., 0]], ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match="classes must hold at least one array"):
        RaggedFewShot.from_classes([], ways=1, shots=1, queries=1)
    with pytest.raises(ValueError, match="num_tasks must be a positive integer, got 0"):
        _task(images, ways=2, shots=1, queries=1).sample(jax.random.key(0), 0)


def test_protonet_meta_trains_on_ragged_classes():
    rng = np.random.default_rng(0)
    classes = [rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8) for n in (3, 5, 9, 4)]
    task = RaggedFewShot.from_classes(classes, ways=2, shots=1, queries=2)
    state, history = metajax.train(
        metajax.ProtoNet(nn.Sequential([Flatten(), nn.Dense(4)]), ways=2),
        task,
        optax.adam(1e-3),
        key=jax.random.key(0),
        num_steps=2,
        meta_batch=2,
        log_every=1,
        progress=False,
    )
    assert int(state.step) == 2 and len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
