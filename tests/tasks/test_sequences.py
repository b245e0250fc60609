"""Task sequences: shapes, labels and transformations of the class-, domain- and sine-incremental sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import continual, tasks


def test_class_incremental():
    images = jnp.broadcast_to(jnp.arange(30, dtype=jnp.uint8)[:, None, None, None, None], (30, 20, 4, 4, 1))
    seq = tasks.class_incremental(jax.random.key(0), images, num_tasks=3, classes_per_task=2)
    assert seq.train_x.shape == (3, 30, 4, 4, 1) and seq.test_y.shape == (3, 10)
    np.testing.assert_array_equal(seq.train_y[1], np.repeat([2, 3], 15))  # class after class, global labels
    # Each global label always shows the same source class (pixel value = class id / 255).
    values = np.asarray(seq.train_x[..., 0, 0, 0]).reshape(-1)
    labels = np.asarray(seq.train_y).reshape(-1)
    assert all(len(set(values[labels == c])) == 1 for c in range(6))
    with pytest.raises(ValueError, match="exceeds the 30 classes"):
        tasks.class_incremental(jax.random.key(0), images, num_tasks=16, classes_per_task=2)


def test_domain_incremental_and_rotation():
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1))
    np.testing.assert_allclose(tasks.rotate(x, jnp.float32(90.0)), jnp.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    images = jax.random.randint(jax.random.key(1), (100, 8, 8, 1), 0, 255).astype(jnp.uint8)
    labels = jnp.arange(100) % 10
    for transform in ("rotation", "permutation"):
        seq = tasks.domain_incremental(
            jax.random.key(2), images, labels, num_tasks=3, train_per_task=20, test_per_task=10, transform=transform
        )
        assert seq.train_x.shape == (3, 20, 8, 8, 1) and seq.test_y.shape == (3, 10)
    permuted = tasks.domain_incremental(
        jax.random.key(2), images, labels, num_tasks=2, train_per_task=20, test_per_task=10, transform="permutation"
    )
    # A permutation keeps each image's pixel multiset.
    x0 = np.sort(np.asarray(permuted.train_x[0]).reshape(20, -1), axis=1)
    picked = [np.sort(np.asarray(images, np.float32).reshape(100, -1) / 255.0, axis=1)]
    assert all(np.isclose(picked[0], row).all(1).any() for row in x0)
    with pytest.raises(ValueError, match=r"labels must have shape \[100\] to match images, got \(99,\)"):
        tasks.domain_incremental(jax.random.key(0), images, labels[:99], num_tasks=1, train_per_task=1, test_per_task=1)


def test_incremental_sine_shapes_and_one_hot():
    seq = tasks.incremental_sine(jax.random.key(0), num_functions=4, train_per_function=6, test_per_function=3)
    assert seq.train_x.shape == (4, 6, 5) and seq.train_y.shape == (4, 6, 1)
    assert seq.test_x.shape == (4, 3, 5) and seq.test_y.shape == (4, 3, 1)
    assert seq.train_x.dtype == jnp.float32 and seq.train_y.dtype == jnp.float32
    np.testing.assert_array_equal(seq.train_x[2, :, 1:], np.tile(np.eye(4)[2], (6, 1)))
    np.testing.assert_array_equal(seq.test_x[3, :, 1:], np.tile(np.eye(4)[3], (3, 1)))


def test_incremental_sine_draws_the_functions_of_sinusoid():
    key = jax.random.key(5)
    config = dict(amplitude=(1.0, 2.0), phase=(0.5, 1.5), x_range=(-2.0, 3.0))
    seq = tasks.incremental_sine(key, num_functions=6, train_per_function=7, test_per_function=4, **config)
    sine = tasks.Sinusoid(shots=7, queries=4, **config)
    ep = sine.sample(key, 6)
    np.testing.assert_array_equal(seq.train_x[..., :1], ep.support_x)
    np.testing.assert_array_equal(seq.test_y, ep.query_y)
    # Task k's training and test points lie on one curve, Sinusoid's k-th.
    for k in range(6):
        x = jnp.concatenate([seq.train_x[k, :, :1], seq.test_x[k, :, :1]])
        y = np.concatenate([seq.train_y[k], seq.test_y[k]])
        np.testing.assert_allclose(sine.curve(key, 6, x)[k], y, rtol=1e-5, atol=1e-5)


def test_incremental_sine_keeps_the_ranges_and_is_jittable():
    draw = jax.jit(lambda k: tasks.incremental_sine(k, num_functions=200, train_per_function=40, test_per_function=1))
    seq = draw(jax.random.key(1))
    x, y = np.asarray(seq.train_x[..., 0]), np.asarray(seq.train_y[..., 0])
    assert -5.0 <= x.min() < -4.9 and 4.9 < x.max() <= 5.0
    # The largest |y| of a function is close to its amplitude, in [0.1, 5].
    peaks = np.abs(y).max(axis=1)
    assert peaks.max() <= 5.0 and peaks.max() > 4.5 and peaks.min() < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_functions=0), "num_functions must be a positive integer, got 0"),
        (dict(train_per_function=2.5), "train_per_function must be a positive integer, got 2.5"),
        (dict(amplitude=(5.0, 0.1)), r"amplitude must be a pair \(low, high\) with low <= high, got \(5.0, 0.1\)"),
    ],
)
def test_bad_incremental_sine_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.incremental_sine(jax.random.key(0), **kwargs)


def test_task_sequence_is_a_pytree_and_concatenates():
    a = tasks.incremental_sine(jax.random.key(0), num_functions=2, train_per_function=3, test_per_function=2)
    assert len(jax.tree.leaves(a)) == 4
    both = a.concatenate(a)
    assert both.num_tasks == 4 and both.train_x.shape == (4, 3, 3)
    other = tasks.incremental_sine(jax.random.key(0), num_functions=3, train_per_function=3, test_per_function=2)
    with pytest.raises(ValueError, match="concatenate: train_x must match after the task axis"):
        a.concatenate(other)


def test_continual_reexports_the_same_objects():
    for name in ("TaskSequence", "class_incremental", "domain_incremental", "incremental_sine", "rotate"):
        assert getattr(continual, name) is getattr(tasks, name)
        assert name in tasks.__all__ and name in continual.__all__
