"""Meta-test evaluation: per-step summaries, intervals, determinism."""

import jax
import numpy as np
import pytest

import metajax
from metajax import models, tasks


def test_evaluate_reports_every_step_with_an_interval():
    learner = metajax.MAML(models.MLP(hidden=(16,), out=1), inner_lr=0.01)
    task = tasks.Sinusoid(shots=50)  # enough points that adapting cannot overfit
    params = learner.init(jax.random.key(0), jax.tree.map(lambda a: a[0], task.sample(jax.random.key(1), 1)))
    out = metajax.evaluate(learner, params, task, key=jax.random.key(2), num_tasks=250, num_steps=3, batch_size=100)
    assert out["num_tasks"] == 250 and out["num_steps"] == 3
    assert len(out["mse"]["mean"]) == 4 and len(out["mse"]["ci95"]) == 4
    assert all(c > 0 for c in out["mse"]["ci95"])
    assert out["mse"]["mean"][3] < out["mse"]["mean"][0]  # fitting 50 points helps on new points
    again = metajax.evaluate(learner, params, task, key=jax.random.key(2), num_tasks=250, num_steps=3, batch_size=100)
    assert again == out


def test_evaluate_counts_the_tasks_an_inner_loop_diverged_on():
    # A step size past the loss's curvature on the tasks of large amplitude: those tasks blow up.
    learner = metajax.MAML(models.MLP(hidden=(16,), out=1), inner_lr=0.05)
    task = tasks.Sinusoid(shots=5)
    params = learner.init(jax.random.key(0), jax.tree.map(lambda a: a[0], task.sample(jax.random.key(1), 1)))
    key = jax.random.key(2)
    out = metajax.evaluate(learner, params, task, key=key, num_tasks=200, num_steps=10, batch_size=200)
    # The same tasks, one at a time, counted here: evaluate draws one batch from its key's first split.
    k_tasks, k_learn = jax.random.split(jax.random.split(key, 1)[0])
    episodes, keys = task.sample(k_tasks, 200), jax.random.split(k_learn, 200)
    one = jax.jit(lambda episode, k: learner.evaluate(params, episode, k, 10)["mse"])
    per_task = np.stack([np.asarray(one(jax.tree.map(lambda a, i=i: a[i], episodes), keys[i])) for i in range(200)])
    expected = (~np.isfinite(per_task)).sum(0)
    assert out["mse"]["nonfinite"] == expected.tolist()
    assert 0 < expected[-1] < 200 and expected[0] == 0  # some tasks diverged, not all; none before adapting
    assert not np.isfinite(out["mse"]["mean"][-1]) and np.isfinite(out["mse"]["mean"][0])


def test_confidence_interval_matches_formula():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, ci = metajax.confidence_interval(values)
    assert mean == 2.5
    np.testing.assert_allclose(ci, 1.96 * np.std(values, ddof=1) / 2)


def test_evaluate_rejects_bad_num_tasks():
    learner = metajax.MAML(models.MLP(hidden=(4,), out=1))
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 2"):
        metajax.evaluate(learner, {}, tasks.Sinusoid(), key=jax.random.key(0), num_tasks=1)
