"""Objectives follow the task, and a mismatch is refused instead of broadcasting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import VectorTasks, one_task
from metajax import losses, models, tasks


def test_mse_and_cross_entropy_match_numpy():
    p, t = np.array([[1.0], [2.0]], np.float32), np.array([[0.5], [4.0]], np.float32)
    np.testing.assert_allclose(losses.mse(p, t)[0], (0.25 + 4.0) / 2, rtol=1e-6)
    logits, labels = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 0], np.int32)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss, metrics = losses.cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, -log_softmax[[0, 1], [0, 0]].mean(), rtol=1e-6)
    assert float(metrics["accuracy"]) == 0.5


def test_the_default_objective_follows_the_targets():
    assert losses.default_objective(jnp.zeros(3, jnp.int32)) is losses.cross_entropy
    assert losses.default_objective(jnp.zeros((3, 1))) is losses.mse
    assert losses.resolve(losses.mse, jnp.zeros(3, jnp.int32)) is losses.mse


@pytest.mark.parametrize(
    ("fn", "predictions", "targets", "error", "message"),
    [
        (losses.mse, jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), TypeError, "mse needs real-valued targets, got int32"),
        (
            losses.mse,
            jnp.zeros((4, 3)),
            jnp.zeros(4),
            ValueError,
            r"predictions and targets of one shape, got \(4, 3\) and \(4,\)",
        ),
        (losses.cross_entropy, jnp.zeros((4, 3)), jnp.zeros(4), TypeError, "needs integer class labels, got float32"),
        (
            losses.cross_entropy,
            jnp.zeros((4, 3)),
            jnp.zeros((4, 1), jnp.int32),
            ValueError,
            r"logits \[examples, ways\]",
        ),
    ],
)
def test_mismatched_objective_is_refused(fn, predictions, targets, error, message):
    with pytest.raises(error, match=message):
        fn(predictions, targets)


def test_maml_defaults_to_cross_entropy_on_classification_and_mse_on_regression():
    classify = metajax.MAML(models.MLP(hidden=(8,), out=3), inner_lr=0.1)
    episode = one_task(VectorTasks())
    params = classify.init(jax.random.key(0), episode)
    loss, metrics = classify.loss(params, episode, None)
    adapted = classify.adapt(params, episode.support, None)
    expected = losses.cross_entropy(classify.predict(adapted, episode.query_x), episode.query_y)[0]
    assert set(metrics) == {"loss", "accuracy"} and np.isclose(loss, expected)
    regress = metajax.MAML(models.MLP(hidden=(8,), out=1))
    sine = one_task(tasks.Sinusoid(shots=3))
    assert set(regress.loss(regress.init(jax.random.key(0), sine), sine, None)[1]) == {"mse"}


def test_regression_objective_on_a_classification_task_is_refused_before_training():
    learner = metajax.MAML(models.MLP(hidden=(8,), out=3), objective=losses.mse)
    with pytest.raises(TypeError, match="mse needs real-valued targets, got int32 targets"):
        metajax.train(learner, VectorTasks(), optax.adam(1e-3), key=jax.random.key(0), num_steps=1, meta_batch=2,
                      progress=False)  # fmt: skip


def test_init_state_validates_the_tasks_episodes():
    class BadTask:
        kind = "regression"

        def sample(self, key, num_tasks):
            return metajax.Episode(jnp.zeros((num_tasks, 5, 1)), jnp.zeros((num_tasks, 4, 1)),
                                   jnp.zeros((num_tasks, 3, 1)), jnp.zeros((num_tasks, 3, 1)))  # fmt: skip

    learner = metajax.MAML(models.MLP(hidden=(8,), out=1))
    with pytest.raises(ValueError, match="the task's episode.support_y must have the same leading"):
        metajax.init_state(learner, BadTask(), optax.adam(1e-3), jax.random.key(0))
    with pytest.raises(
        TypeError, match="learner must conform to metajax.learner.MetaObjective .* lacks adapted_params"
    ):
        metajax.init_state(object(), tasks.Sinusoid(), optax.adam(1e-3), jax.random.key(0))


def test_labels_of_another_shape_and_integer_inputs_are_refused():
    # [5] targets against [5, 1] predictions would broadcast to a [5, 5] difference: refused instead.
    with pytest.raises(ValueError, match=r"mse needs predictions and targets of one shape, got \(5, 1\) and \(5,\)"):
        losses.mse(jnp.zeros((5, 1)), jnp.zeros((5,)))
    with pytest.raises(ValueError, match=r"cross_entropy needs logits \[examples, ways\] for labels \[examples\]"):
        losses.cross_entropy(jnp.zeros((5, 3)), jnp.zeros((5, 1), jnp.int32))
    learner = metajax.MAML(models.MLP(hidden=(8,), out=1))
    floats = one_task(tasks.Sinusoid(shots=5))
    params = learner.init(jax.random.key(0), floats)
    pixels = floats.replace(query_x=jnp.zeros((10, 1), jnp.int32))  # flax would promote them silently
    with pytest.raises(TypeError, match=r"the model's inputs x .* must be floating point, got dtype int32 \(10, 1\)"):
        learner.loss(params, pixels, jax.random.key(1))


def test_episodes_are_validated_once_outside_jit(monkeypatch):
    seen = []

    def spy(episode, **kwargs):
        seen.append(all(not isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(episode)))

    learner, task = metajax.MAML(models.MLP(hidden=(8,), out=1)), tasks.Sinusoid(shots=5)
    monkeypatch.setattr(metajax.training, "validate_episode", spy)
    state = metajax.init_state(learner, task, optax.adam(1e-3), jax.random.key(0))
    assert seen == [True]
    monkeypatch.setattr(metajax.evaluation, "validate_episode", spy)
    metajax.evaluate(learner, state.params, task, key=jax.random.key(1), num_tasks=4, num_steps=1, batch_size=2)
    assert seen == [True, True]
