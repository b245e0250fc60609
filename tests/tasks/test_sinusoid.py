"""Sinusoid tasks follow the MAML protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import tasks


def test_shapes_ranges_and_consistency():
    task = tasks.Sinusoid(shots=10, queries=20)
    key = jax.random.key(0)
    ep = task.sample(key, 500)
    assert ep.support_x.shape == (500, 10, 1) and ep.query_y.shape == (500, 20, 1)
    assert ep.support_x.dtype == jnp.float32
    x = np.concatenate([ep.support_x, ep.query_x], 1)
    y = np.concatenate([ep.support_y, ep.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5
    assert np.abs(y).max() <= 5
    # The episode's points lie on the tasks' true curves.
    curves = task.curve(key, 500, jnp.asarray(x[0]))
    np.testing.assert_allclose(curves[0], y[0], rtol=1e-5, atol=1e-5)
    # Amplitudes span [0.1, 5]: the largest |y| of a task is at most its amplitude.
    assert 4.0 < np.abs(y).max(axis=(1, 2)).max() <= 5.0


def test_deterministic_for_a_key_and_different_for_another():
    task = tasks.Sinusoid(shots=5)
    a, b = task.sample(jax.random.key(1), 4), task.sample(jax.random.key(1), 4)
    c = task.sample(jax.random.key(2), 4)
    np.testing.assert_array_equal(a.support_y, b.support_y)
    assert not np.allclose(a.support_y, c.support_y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": 0}, "shots must be a positive integer, got 0"),
        ({"queries": -2}, "queries"),
        ({"amplitude": (5, 1)}, "amplitude"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.Sinusoid(**kwargs)
