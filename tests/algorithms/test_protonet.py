"""Prototypical Networks: numbers against numpy, shapes, errors, batching and a short meta-training run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from helpers import Flatten, held_out_loss_before_after, separable_vectors
from metajax import models
from metajax.algorithms import ProtoNet


def tiny_episode():
    """3-way task on 2x2 "images": 2 support examples per class, 4 queries."""
    rng = np.random.default_rng(0)
    sx = rng.normal(size=(6, 2, 2)).astype(np.float32)
    sy = np.array([0, 1, 2, 2, 1, 0], np.int32)
    qx = rng.normal(size=(4, 2, 2)).astype(np.float32)
    qy = np.array([2, 0, 1, 1], np.int32)
    return metajax.Episode(jnp.asarray(sx), jnp.asarray(sy), jnp.asarray(qx), jnp.asarray(qy))


def numpy_loss(episode, similarity):
    sx, qx = (np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in (episode.support_x, episode.query_x))
    sy, qy = np.asarray(episode.support_y), np.asarray(episode.query_y)
    prototypes = np.stack([sx[sy == c].mean(0) for c in range(3)])
    logits = np.array([[similarity(q, p) for p in prototypes] for q in qx])
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_softmax[np.arange(len(qy)), qy].mean(), (logits.argmax(1) == qy).mean(), prototypes


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_euclidean_loss_matches_numpy(temperature):
    episode = tiny_episode()
    learner = ProtoNet(Flatten(), ways=3, temperature=temperature)
    params = learner.init(jax.random.key(0), episode)
    loss, metrics = learner.loss(params, episode, jax.random.key(1))
    expected, accuracy, prototypes = numpy_loss(episode, lambda q, p: -temperature * np.sum((q - p) ** 2))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], accuracy)
    np.testing.assert_allclose(learner.adapt(params, episode.support, None)["prototypes"], prototypes, rtol=1e-6)


def test_cosine_loss_matches_numpy():
    episode = tiny_episode()
    learner = ProtoNet(Flatten(), ways=3, distance="cosine", temperature=10.0)
    loss, metrics = learner.loss(learner.init(jax.random.key(0), episode), episode, jax.random.key(1))
    expected, accuracy, _ = numpy_loss(episode, lambda q, p: 10.0 * q @ p / np.linalg.norm(q) / np.linalg.norm(p))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], accuracy)


def test_hand_set_dense_embedding_scales_distances():
    # embed(x) = 2 x, so squared distances (and the loss's logits) are 4 times the identity's.
    episode = jax.tree.map(lambda a: a.reshape(a.shape[0], -1) if a.ndim > 1 else a, tiny_episode())
    learner = ProtoNet(nn.Dense(4), ways=3)
    params = {"kernel": 2.0 * jnp.eye(4), "bias": jnp.zeros(4)}
    expected, _, _ = numpy_loss(episode, lambda q, p: -4.0 * np.sum((q - p) ** 2))
    np.testing.assert_allclose(learner.loss(params, episode, None)[0], expected, rtol=1e-5)


def test_adapt_predict_and_evaluate_shapes():
    episode = tiny_episode()
    learner = ProtoNet(models.MLP(hidden=(8,), out=None), ways=3)
    flat = jax.tree.map(lambda a: a.reshape(a.shape[0], -1) if a.ndim > 1 else a, episode)
    params = learner.init(jax.random.key(0), flat)
    adapted = learner.adapt(params, flat.support, jax.random.key(1))
    assert adapted["prototypes"].shape == (3, 8)
    assert learner.predict(adapted, flat.query_x).shape == (4, 3)
    for num_steps in (None, 5):
        metrics = learner.evaluate(params, flat, jax.random.key(2), num_steps)
        assert set(metrics) == {"loss", "accuracy"}
        assert all(m.shape == (1,) for m in metrics.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ways": 0}, "ways must be a positive integer, got 0"),
        ({"ways": 2.5}, "ways must be a positive integer, got 2.5"),
        ({"ways": 3, "distance": "l2"}, "distance must be one of 'euclidean', 'cosine'; got 'l2'"),
        ({"ways": 3, "temperature": 0.0}, "temperature must be a positive number, got 0.0"),
    ],
)
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProtoNet(Flatten(), **kwargs)


def test_episode_that_does_not_fit_ways_is_refused():
    episode = tiny_episode()
    with pytest.raises(ValueError, match="ways=7 needs at least one support example per class.*6 examples"):
        ProtoNet(Flatten(), ways=7).init(jax.random.key(0), episode)
    floats = episode.replace(support_y=episode.support_y.astype(jnp.float32))
    with pytest.raises(TypeError, match="support_y must hold integer class labels in \\[0, 3\\), got dtype float32"):
        ProtoNet(Flatten(), ways=3).loss({}, floats, None)


def test_adam_steps_lower_the_loss():
    learner = ProtoNet(models.MLP(hidden=(32,), out=16), ways=3)
    before, after = held_out_loss_before_after(learner, steps=20)
    assert after < 0.6 * before, (before, after)


def test_meta_test_protocol_reports_one_value_per_metric():
    class Vectors:
        kind = "classification"

        def sample(self, key, num_tasks):
            return separable_vectors(key, num_tasks)

    learner = ProtoNet(models.MLP(hidden=(8,), out=None), ways=3)
    params = learner.init(jax.random.key(0), jax.tree.map(lambda a: a[0], separable_vectors(jax.random.key(1), 1)))
    summary = metajax.evaluate(learner, params, Vectors(), key=jax.random.key(2), num_tasks=4, batch_size=2)
    assert summary["num_steps"] == 0
    assert len(summary["accuracy"]["mean"]) == 1 and len(summary["loss"]["ci95"]) == 1


@pytest.mark.parametrize("learner", [ProtoNet(Flatten(), ways=3), metajax.MatchingNet(Flatten(), ways=3)])
def test_labels_outside_ways_are_refused_where_known(learner):
    episode = tiny_episode()
    message = (
        r"support_y must hold class labels in \[0, ways=3\), got labels from 0 to 3; check the learner's ways against"
    )
    with pytest.raises(ValueError, match=message):
        learner.init(jax.random.key(0), episode.replace(support_y=episode.support_y.at[0].set(3)))
    with pytest.raises(ValueError, match=r"query_y must hold class labels in \[0, ways=3\), got labels from -1 to"):
        learner.init(jax.random.key(0), episode.replace(query_y=episode.query_y.at[0].set(-1)))
    task = metajax.tasks.FewShot(jnp.zeros((6, 4, 2, 2, 1), jnp.uint8), ways=5, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"learner ways=3 cannot classify the task's labels 0..4 \(task ways=5\)"):
        metajax.evaluate(learner, {}, task, key=jax.random.key(0), num_tasks=2)
