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


def test_confidence_interval_matches_formula():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, ci = metajax.confidence_interval(values)
    assert mean == 2.5
    np.testing.assert_allclose(ci, 1.96 * np.std(values, ddof=1) / 2)


def test_evaluate_rejects_bad_num_tasks():
    learner = metajax.MAML(models.MLP(hidden=(4,), out=1))
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 2"):
        metajax.evaluate(learner, {}, tasks.Sinusoid(), key=jax.random.key(0), num_tasks=1)
