"""Lifelong streams: schedule statistics match the configuration, invariants, determinism, pytrees, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import continual, tasks


def _schedules(stream, num_tasks, num_ood, length=400, draws=100, seed=0):
    keys = jax.random.split(jax.random.key(seed), draws)
    fn = jax.jit(jax.vmap(lambda k: stream.schedule(k, length, num_tasks=num_tasks, num_ood=num_ood)))
    return jax.tree.map(np.asarray, fn(keys))


def test_switch_probability_and_mixture_match_configuration():
    stream = tasks.LifelongStream(p_stay=0.8, mixture=(0.5, 0.3, 0.2))
    s = _schedules(stream, num_tasks=1000, num_ood=10)  # new and OOD tasks never run out
    switched = s.switched[:, 1:]
    assert switched.mean() == pytest.approx(0.2, abs=0.01)
    # Seen tasks are available once two in-distribution tasks exist; count switches from then on.
    has_two = np.cumsum(s.source == tasks.NEW, axis=1)[:, :-1] >= 2
    sources = s.source[:, 1:][switched & has_two]
    fractions = np.bincount(sources, minlength=3) / sources.size
    np.testing.assert_allclose(fractions, [0.5, 0.3, 0.2], atol=0.025)


def test_schedule_invariants():
    s = _schedules(tasks.LifelongStream(p_stay=0.7, mixture=(1.0, 1.0, 1.0)), num_tasks=4, num_ood=2, draws=20)
    assert s.switched[:, 0].all() and (s.task[:, 0] == 0).all()
    for task, source, switched in zip(s.task, s.source, s.switched, strict=True):
        changed = task[1:] != task[:-1]
        np.testing.assert_array_equal(changed, switched[1:])  # a switch always changes the task
        new_tasks = task[switched & (source == tasks.NEW)]
        np.testing.assert_array_equal(new_tasks, np.arange(new_tasks.size))  # introduced in order
        assert (task[source == tasks.OOD] >= 4).all() and (task[source != tasks.OOD] < 4).all()
        seen_steps = np.flatnonzero(switched & (source == tasks.SEEN))
        for t in seen_steps:
            assert task[t] in set(task[:t])


def test_schedule_is_deterministic_for_a_key():
    stream = tasks.LifelongStream(p_stay=0.5)
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
        (dict(mixture=(1.0, 1.0)), r"mixture must be three .* got \(1.0, 1.0\)"),
    ],
)
def test_bad_stream_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.LifelongStream(**kwargs)


def test_stream_and_schedule_are_pytrees():
    stream = tasks.LifelongStream(0.6, [1, 2, 0])  # positional, a list of ints
    assert stream.mixture == (1.0, 2.0, 0.0) and jax.tree.leaves(stream) == []  # all static
    same = tasks.LifelongStream(0.6, (1.0, 2.0, 0.0))
    assert stream == same and hash(stream) == hash(same)
    # As a jit argument: one compilation per configuration, the key traced.
    draw = jax.jit(lambda stream, key: stream.schedule(key, 20, num_tasks=3))
    s = draw(stream, jax.random.key(0))
    assert isinstance(s, tasks.Schedule) and len(jax.tree.leaves(s)) == 3
    assert s.task.dtype == jnp.int32 and s.source.dtype == jnp.int32 and s.switched.dtype == jnp.bool_
    shuffled = s.replace(switched=jnp.zeros_like(s.switched))
    assert not shuffled.switched.any() and shuffled.task is s.task


def test_draw_batch_takes_the_tasks_training_examples():
    pool = tasks.TaskSequence(
        jnp.arange(3 * 4, dtype=jnp.float32).reshape(3, 4, 1),
        jnp.broadcast_to(jnp.arange(3, dtype=jnp.int32)[:, None], (3, 4)),
        jnp.zeros((3, 2, 1)),
        jnp.zeros((3, 2), jnp.int32),
    )
    x, y = jax.jit(tasks.draw_batch, static_argnums=3)(jax.random.key(0), pool, jnp.int32(2), 16)
    assert x.shape == (16, 1) and y.shape == (16,)
    assert (np.asarray(y) == 2).all() and set(np.asarray(x[:, 0]).tolist()) <= {8.0, 9.0, 10.0, 11.0}


def test_continual_reexports_the_same_objects():
    for name in ("SEEN", "NEW", "OOD", "Schedule", "LifelongStream", "draw_batch"):
        assert getattr(continual, name) is getattr(tasks, name)
        assert name in tasks.__all__ and name in continual.__all__
