"""The reservoir replay buffer: the reservoir property, fixed shapes, masked sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.continual import ReplayBuffer


def test_reservoir_property():
    capacity, n, draws = 5, 20, 2000
    empty = ReplayBuffer.create(capacity, jnp.zeros((1,)), jnp.zeros((), jnp.int32))
    x = jnp.arange(n, dtype=jnp.float32)[:, None]
    y = jnp.arange(n, dtype=jnp.int32)

    def fill(key):
        # Offer the stream in four batches, as a stream of steps would.
        buf = empty
        for i, k in enumerate(jax.random.split(key, 4)):
            buf = buf.add(x[5 * i : 5 * i + 5], y[5 * i : 5 * i + 5], k)
        return buf.y

    kept = np.asarray(jax.jit(jax.vmap(fill))(jax.random.split(jax.random.key(0), draws)))
    freq = np.array([(kept == i).any(1).mean() for i in range(n)])
    # Every example is kept with probability capacity / n = 0.25 (binomial sd ~0.01).
    np.testing.assert_allclose(freq, capacity / n, atol=0.04)
    assert all(len(set(row)) == capacity for row in kept[:50])  # no duplicates


def test_fills_in_order_then_counts():
    buf = ReplayBuffer.create(4, jnp.zeros((2,)), jnp.zeros((), jnp.int32))
    buf = buf.add(jnp.ones((3, 2)), jnp.arange(3), jax.random.key(0))
    assert int(buf.size) == 3 and int(buf.seen) == 3 and buf.x.shape == (4, 2)
    np.testing.assert_array_equal(buf.y[:3], [0, 1, 2])
    buf = buf.add(jnp.ones((5, 2)), jnp.arange(5), jax.random.key(1))
    assert int(buf.size) == 4 and int(buf.seen) == 8


def test_masked_sampling():
    buf = ReplayBuffer.create(4, jnp.zeros((2,)), jnp.zeros((), jnp.int32))
    _, _, mask = buf.sample(jax.random.key(0), 3)
    assert mask.shape == (3,) and not mask.any()
    buf = buf.add(jnp.ones((2, 2)), jnp.array([7, 8]), jax.random.key(0))
    _, y, mask = buf.sample(jax.random.key(1), 50)
    assert mask.all() and set(np.asarray(y).tolist()) <= {7, 8}


def test_bad_shapes_are_named():
    buf = ReplayBuffer.create(4, jnp.zeros((2,)), jnp.zeros((), jnp.int32))
    with pytest.raises(ValueError, match=r"expects x \[batch, 2\]"):
        buf.add(jnp.ones((3, 5)), jnp.arange(3), jax.random.key(0))
    with pytest.raises(ValueError, match="capacity must be a positive integer, got 0"):
        ReplayBuffer.create(0, jnp.zeros((2,)), jnp.zeros(()))
