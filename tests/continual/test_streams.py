"""Streams: schedule statistics match the configuration, determinism, shapes of the task sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import continual as C


def _schedules(stream, num_tasks, num_ood, length=400, draws=100, seed=0):
    keys = jax.random.split(jax.random.key(seed), draws)
    fn = jax.jit(jax.vmap(lambda k: stream.schedule(k, length, num_tasks=num_tasks, num_ood=num_ood)))
    return jax.tree.map(np.asarray, fn(keys))


def test_switch_probability_and_mixture_match_configuration():
    stream = C.LifelongStream(p_stay=0.8, mixture=(0.5, 0.3, 0.2))
    s = _schedules(stream, num_tasks=1000, num_ood=10)  # new and OOD tasks never run out
    switched = s.switched[:, 1:]
    assert switched.mean() == pytest.approx(0.2, abs=0.01)
    # Seen tasks are available once two in-distribution tasks exist; count switches from then on.
    has_two = np.cumsum(s.source == C.NEW, axis=1)[:, :-1] >= 2
    sources = s.source[:, 1:][switched & has_two]
    fractions = np.bincount(sources, minlength=3) / sources.size
    np.testing.assert_allclose(fractions, [0.5, 0.3, 0.2], atol=0.025)


def test_schedule_invariants():
    s = _schedules(C.LifelongStream(p_stay=0.7, mixture=(1.0, 1.0, 1.0)), num_tasks=4, num_ood=2, draws=20)
    assert s.switched[:, 0].all() and (s.task[:, 0] == 0).all()
    for task, source, switched in zip(s.task, s.source, s.switched, strict=True):
        changed = task[1:] != task[:-1]
        np.testing.assert_array_equal(changed, switched[1:])  # a switch always changes the task
        new_tasks = task[switched & (source == C.NEW)]
        np.testing.assert_array_equal(new_tasks, np.arange(new_tasks.size))  # introduced in order
        assert (task[source == C.OOD] >= 4).all() and (task[source != C.OOD] < 4).all()
        seen_steps = np.flatnonzero(switched & (source == C.SEEN))
        for t in seen_steps:
            assert task[t] in set(task[:t])


def test_schedule_is_deterministic_for_a_key():
    stream = C.LifelongStream(p_stay=0.5)
    a = stream.schedule(jax.random.key(3), 50, num_tasks=5)
    b = stream.schedule(jax.random.key(3), 50, num_tasks=5)
    c = stream.schedule(jax.random.key(4), 50, num_tasks=5)
    np.testing.assert_array_equal(a.task, b.task)
    assert not np.array_equal(a.task, c.task)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(p_stay=1.5), r"p_stay must be a probability in \[0, 1\], got 1.5"),
        (dict(mixture=(0.0, 0.0, 0.0)), "mixture must be three non-negative weights"),
    ],
)
def test_bad_stream_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        C.LifelongStream(**kwargs)


def test_class_incremental():
    images = jnp.broadcast_to(jnp.arange(30, dtype=jnp.uint8)[:, None, None, None, None], (30, 20, 4, 4, 1))
    seq = C.class_incremental(jax.random.key(0), images, num_tasks=3, classes_per_task=2)
    assert seq.train_x.shape == (3, 30, 4, 4, 1) and seq.test_y.shape == (3, 10)
    np.testing.assert_array_equal(seq.train_y[1], np.repeat([2, 3], 15))  # class after class, global labels
    # Each global label always shows the same source class (pixel value = class id / 255).
    values = np.asarray(seq.train_x[..., 0, 0, 0]).reshape(-1)
    labels = np.asarray(seq.train_y).reshape(-1)
    assert all(len(set(values[labels == c])) == 1 for c in range(6))
    with pytest.raises(ValueError, match="exceeds the 30 classes"):
        C.class_incremental(jax.random.key(0), images, num_tasks=16, classes_per_task=2)


def test_domain_incremental_and_rotation():
    x = jax.random.uniform(jax.random.key(0), (5, 8, 8, 1))
    np.testing.assert_allclose(C.rotate(x, jnp.float32(90.0)), jnp.rot90(x, 1, axes=(1, 2)), atol=1e-5)
    images = jax.random.randint(jax.random.key(1), (100, 8, 8, 1), 0, 255).astype(jnp.uint8)
    labels = jnp.arange(100) % 10
    for transform in ("rotation", "permutation"):
        seq = C.domain_incremental(
            jax.random.key(2), images, labels, num_tasks=3, train_per_task=20, test_per_task=10, transform=transform
        )
        assert seq.train_x.shape == (3, 20, 8, 8, 1) and seq.test_y.shape == (3, 10)
    permuted = C.domain_incremental(
        jax.random.key(2), images, labels, num_tasks=2, train_per_task=20, test_per_task=10, transform="permutation"
    )
    # A permutation keeps each image's pixel multiset.
    x0 = np.sort(np.asarray(permuted.train_x[0]).reshape(20, -1), axis=1)
    picked = [np.sort(np.asarray(images, np.float32).reshape(100, -1) / 255.0, axis=1)]
    assert all(np.isclose(picked[0], row).all(1).any() for row in x0)


def test_incremental_sine_and_trajectories():
    seq = C.incremental_sine(jax.random.key(0), num_functions=4, train_per_function=6, test_per_function=3)
    assert seq.train_x.shape == (4, 6, 5) and seq.train_y.shape == (4, 6, 1)
    np.testing.assert_array_equal(seq.train_x[2, :, 1:], np.tile(np.eye(4)[2], (6, 1)))
    ep = C.SineTrajectories(functions=3, shots=4, remember=5).sample(jax.random.key(0), 2)
    assert ep.support_x.shape == (2, 12, 4) and ep.query_y.shape == (2, 5, 1)
    pool = jnp.zeros((7, 20, 4, 4, 1), jnp.uint8)
    ep = C.Trajectories(pool, None, tasks=2, shots=3, remember=6).sample(jax.random.key(0), 1)
    assert ep.support_x.shape == (1, 6, 4, 4, 1) and ep.support_x.dtype == jnp.float32
    assert ep.support_y[0, 0] == ep.support_y[0, 2] and ep.query_y.shape == (1, 6)
