"""OML's meta-training distributions: episode shapes and labels, pytrees under jit, sine ranges, bad configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import continual, tasks


def _id_pool(classes=7, examples=20):
    """``[classes, examples, 2, 2, 1]`` uint8 whose pixels encode the class id."""
    ids = jnp.arange(classes, dtype=jnp.uint8)[:, None, None, None, None]
    return jnp.broadcast_to(ids, (classes, examples, 2, 2, 1))


def test_trajectories_from_a_class_major_pool():
    pool = _id_pool()
    task = tasks.Trajectories(pool, None, tasks=2, shots=3, remember=6)
    assert isinstance(task, tasks.TaskDistribution) and task.kind == "classification"
    ep = task.sample(jax.random.key(0), 4)
    assert ep.support_x.shape == (4, 6, 2, 2, 1) and ep.support_x.dtype == jnp.float32
    assert ep.query_x.shape == (4, 6, 2, 2, 1) and ep.query_y.shape == (4, 6)
    sy, qy = np.asarray(ep.support_y), np.asarray(ep.query_y)
    assert (sy[:, :3] == sy[:, :1]).all() and (sy[:, 3:] == sy[:, 3:4]).all()  # one task after the other
    assert (sy[:, 0] != sy[:, 3]).all()  # distinct tasks in a trajectory
    # Labels are the pool classes: the pixels (class id / 255) say so.
    np.testing.assert_allclose(np.asarray(ep.support_x[..., 0, 0, 0]) * 255, sy, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ep.query_x[..., 0, 0, 0]) * 255, qy, atol=1e-4)


def test_trajectories_with_labels_is_a_pytree_of_its_pool():
    pool_x = jax.random.normal(jax.random.key(0), (5, 8, 3))
    pool_y = jax.random.normal(jax.random.key(1), (5, 8, 1))
    task = tasks.Trajectories(pool_x, pool_y, tasks=1, shots=4, remember=2, kind="regression")
    leaves = jax.tree.leaves(task)
    assert len(leaves) == 2 and leaves[0] is pool_x and leaves[1] is pool_y  # the configuration is static
    traced = jax.jit(lambda t, k: t.sample(k, 3))(task, jax.random.key(2))
    eager = task.sample(jax.random.key(2), 3)
    jax.tree.map(np.testing.assert_allclose, traced, eager)
    assert traced.support_x.shape == (3, 4, 3) and traced.query_y.shape == (3, 2, 1)
    # Rebuilt by JAX with other leaves, the configuration stays.
    doubled = jax.tree.map(lambda a: 2 * a, task)
    assert (doubled.tasks, doubled.shots, doubled.remember, doubled.kind) == (1, 4, 2, "regression")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(shots=0), "shots must be a positive integer, got 0"),
        (dict(tasks=1.5), "tasks must be a positive integer, got 1.5"),
        (dict(kind="clasification"), "kind must be one of 'classification', 'regression'; got 'clasification'"),
    ],
)
def test_bad_trajectories_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.Trajectories(_id_pool(), None, **kwargs)


def test_trajectories_must_fit_the_pool():
    with pytest.raises(ValueError, match=r"Trajectories: tasks=8 and shots=3 must fit the pool \(7, 20\)"):
        tasks.Trajectories(_id_pool(), None, tasks=8, shots=3).sample(jax.random.key(0), 1)


def test_sine_trajectories_shapes_one_hot_and_ranges():
    task = tasks.SineTrajectories(functions=3, shots=4, remember=5)
    assert isinstance(task, tasks.TaskDistribution) and task.kind == "regression"
    assert jax.tree.leaves(task) == []
    ep = jax.jit(lambda t, k: t.sample(k, 2))(task, jax.random.key(0))
    assert ep.support_x.shape == (2, 12, 4) and ep.query_y.shape == (2, 5, 1)
    np.testing.assert_array_equal(ep.support_x[0, 4:8, 1:], np.tile(np.eye(3)[1], (4, 1)))  # function after function
    assert (np.asarray(ep.query_x[..., 1:]).sum(-1) == 1).all()
    big = tasks.SineTrajectories(functions=10, shots=20, remember=1).sample(jax.random.key(1), 40)
    x, y = np.asarray(big.support_x[..., 0]), np.asarray(big.support_y[..., 0])
    assert -5.0 <= x.min() and x.max() <= 5.0 and np.abs(y).max() <= 5.0
    assert np.abs(y).max() > 4.5


def test_sine_trajectories_query_points_lie_on_the_trajectorys_functions():
    task = tasks.SineTrajectories(functions=2, shots=6, remember=30, amplitude=(1.0, 3.0), x_range=(-1.0, 1.0))
    ep = task.sample(jax.random.key(3), 1)
    sx, sy, qx, qy = (np.asarray(a[0]) for a in (ep.support_x, ep.support_y, ep.query_x, ep.query_y))
    for f in range(2):
        # Recover amplitude and phase of function f from its support points: y = a sin x - b cos x.
        rows = sx[:, 1 + f] == 1
        design = np.stack([np.sin(sx[rows, 0]), -np.cos(sx[rows, 0])], 1)
        (a, b), *_ = np.linalg.lstsq(design, sy[rows, 0], rcond=None)
        q = qx[:, 1 + f] == 1
        np.testing.assert_allclose(a * np.sin(qx[q, 0]) - b * np.cos(qx[q, 0]), qy[q, 0], atol=1e-4)
        assert 1.0 - 1e-4 <= np.hypot(a, b) <= 3.0 + 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(functions=0), "functions must be a positive integer, got 0"),
        (dict(remember=-1), "remember must be a positive integer, got -1"),
        (dict(x_range=(1.0, -1.0)), r"x_range must be a pair \(low, high\) with low <= high, got \(1.0, -1.0\)"),
    ],
)
def test_bad_sine_trajectories_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.SineTrajectories(**kwargs)


def test_continual_reexports_the_same_objects():
    for name in ("Trajectories", "SineTrajectories"):
        assert getattr(continual, name) is getattr(tasks, name)
        assert name in tasks.__all__ and name in continual.__all__
