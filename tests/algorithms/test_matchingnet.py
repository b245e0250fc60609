"""Matching Networks: attention and loss against numpy, full context, errors, batching, a short training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import Flatten, held_out_loss_before_after
from metajax import models
from metajax.algorithms import MatchingNet


def tiny_episode():
    """3-way task on 4-vectors: 2 support examples per class, 4 queries."""
    rng = np.random.default_rng(0)
    sx = rng.normal(size=(6, 4)).astype(np.float32)
    sy = np.array([0, 1, 2, 2, 1, 0], np.int32)
    qx = rng.normal(size=(4, 4)).astype(np.float32)
    qy = np.array([2, 0, 1, 1], np.int32)
    return metajax.Episode(jnp.asarray(sx), jnp.asarray(sy), jnp.asarray(qx), jnp.asarray(qy))


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_attention_and_loss_match_numpy(temperature):
    episode = tiny_episode()
    learner = MatchingNet(Flatten(), ways=3, temperature=temperature)
    params = learner.init(jax.random.key(0), episode)
    sx, qx = np.asarray(episode.support_x, np.float64), np.asarray(episode.query_x, np.float64)
    sy, qy = np.asarray(episode.support_y), np.asarray(episode.query_y)
    cosine = (qx / np.linalg.norm(qx, axis=1, keepdims=True)) @ (sx / np.linalg.norm(sx, axis=1, keepdims=True)).T
    attention = np.exp(temperature * cosine)
    attention /= attention.sum(1, keepdims=True)
    probabilities = attention @ np.eye(3)[sy]
    expected = -np.mean(np.log(probabilities[np.arange(4), qy] + 1e-8))

    np.testing.assert_allclose(learner.attention(params, episode.support_x, episode.query_x), attention, rtol=1e-5)
    loss, metrics = learner.loss(params, episode, jax.random.key(1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(probabilities.argmax(1) == qy))


@pytest.mark.parametrize("fce", [False, True])
def test_attention_rows_sum_to_one(fce):
    episode = tiny_episode()
    learner = MatchingNet(models.MLP(hidden=(8,), out=None), ways=3, fce=fce, fce_steps=2)
    params = learner.init(jax.random.key(0), episode)
    attention = learner.attention(params, episode.support_x, episode.query_x)
    assert attention.shape == (4, 6)
    np.testing.assert_allclose(attention.sum(1), np.ones(4), rtol=1e-5)
    assert np.all(attention >= 0)


def test_full_context_parameters_are_trained():
    episode = tiny_episode()
    learner = MatchingNet(models.MLP(hidden=(8,), out=None), ways=3, fce=True, fce_steps=2)
    params = learner.init(jax.random.key(0), episode)
    assert sorted(params) == ["embed", "query_context", "support_context"]
    assert sorted(params["support_context"]) == ["backward", "forward"]
    grads = jax.jit(jax.grad(lambda p: learner.loss(p, episode, None)[0]))(params)
    for part in ("embed", "support_context", "query_context"):
        norm = optax.tree.norm(grads[part])
        assert np.isfinite(norm) and norm > 0, part
    # Full context changes the embeddings, hence the attention.
    plain = MatchingNet(learner.embed, ways=3).attention({"embed": params["embed"]}, episode.support_x, episode.query_x)
    assert not np.allclose(plain, learner.attention(params, episode.support_x, episode.query_x))


@pytest.mark.parametrize("fce", [False, True])
def test_adapt_predict_and_evaluate_shapes(fce):
    episode = tiny_episode()
    learner = MatchingNet(models.MLP(hidden=(8,), out=None), ways=3, fce=fce, fce_steps=2)
    params = learner.init(jax.random.key(0), episode)
    adapted = learner.adapt(params, episode.support, jax.random.key(1))
    assert adapted["support"].shape == (6, 8) and adapted["labels"].shape == (6, 3)
    logits = learner.predict(adapted, episode.query_x)
    assert logits.shape == (4, 3)
    # The logits are log-probabilities (up to the 1e-8 floor).
    np.testing.assert_allclose(jnp.exp(logits).sum(1), np.ones(4), rtol=1e-5)
    for num_steps in (None, 5):
        metrics = learner.evaluate(params, episode, jax.random.key(2), num_steps)
        assert set(metrics) == {"loss", "accuracy"}
        assert all(m.shape == (1,) for m in metrics.values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ways": 0}, ValueError, "ways must be a positive integer, got 0"),
        ({"ways": "5"}, ValueError, "ways must be a positive integer, got '5'"),
        ({"ways": 3, "fce": "yes"}, TypeError, "fce must be True or False, got 'yes'"),
        ({"ways": 3, "fce_steps": 0}, ValueError, "fce_steps must be a positive integer, got 0"),
        ({"ways": 3, "temperature": -1.0}, ValueError, "temperature must be a positive number, got -1.0"),
    ],
)
def test_bad_configuration_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        MatchingNet(Flatten(), **kwargs)


def test_episode_that_does_not_fit_ways_is_refused():
    episode = tiny_episode()
    with pytest.raises(ValueError, match="ways=10 needs at least one support example per class.*6 examples"):
        MatchingNet(Flatten(), ways=10).init(jax.random.key(0), episode)
    with pytest.raises(ValueError, match="support_y must have shape \\[examples\\]"):
        MatchingNet(Flatten(), ways=3).adapt({"embed": {}}, (episode.support_x, episode.support_y[:, None]), None)


@pytest.mark.parametrize("fce", [False, True])
def test_adam_steps_lower_the_loss(fce):
    learner = MatchingNet(models.MLP(hidden=(32,), out=16), ways=3, fce=fce, fce_steps=2)
    before, after = held_out_loss_before_after(learner, steps=15)
    assert after < 0.85 * before, (before, after)
