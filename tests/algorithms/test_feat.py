"""FEAT: prototypes adapted by set-to-set attention, the contrastive regulariser, dropout only in training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import VectorTasks, one_task
from metajax import models
from metajax.app import cli

TASK = VectorTasks(ways=3, shots=2, queries=2)


def _learner(**options):
    return metajax.FEAT(models.MLP(hidden=(16,), out=None), ways=3, **options)


def _set_attention(p: dict, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """FEAT's set function in NumPy: one-head attention, output layer, residual, layer norm (no dropout)."""
    q, k, v = (x @ np.asarray(p[n]["kernel"], np.float64) for n in ("query", "key", "value"))
    logits = np.where(mask, q @ k.T / np.sqrt(x.shape[1]), -np.inf)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    read = (weights / weights.sum(axis=1, keepdims=True)) @ v
    y = x + read @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"])
    normed = (y - y.mean(1, keepdims=True)) / np.sqrt(y.var(1, keepdims=True) + 1e-6)
    return normed * np.asarray(p["LayerNorm_0"]["scale"]) + np.asarray(p["LayerNorm_0"]["bias"])


def _embed(learner, params, x):
    return np.asarray(metajax.algorithms.protonet.flat_embedding(learner.embed, params["embed"], x), np.float64)


def _means(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([e[y == c].mean(0) for c in range(3)])


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def test_logits_and_the_regulariser_equal_an_independent_computation():
    learner, episode = _learner(contrastive=0.5, temperature=0.1, contrastive_temperature=0.2), one_task(TASK)
    params = learner.init(jax.random.key(0), episode)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["set"])
    fs, fq = _embed(learner, params, episode.support_x), _embed(learner, params, episode.query_x)
    sy, qy = np.asarray(episode.support_y), np.asarray(episode.query_y)

    prototypes = _set_attention(p, _means(fs, sy), np.ones((3, 3), bool))
    logits = -0.1 * ((fq[:, None] - prototypes[None]) ** 2).sum(-1)
    np.testing.assert_allclose(learner.predict(learner.adapt(params, episode.support, None), episode.query_x),
                               logits, rtol=1e-4, atol=1e-5)  # fmt: skip

    instances, labels = np.concatenate([fs, fq]), np.concatenate([sy, qy])
    centres = _means(_set_attention(p, instances, labels[:, None] == labels[None]), labels)
    regulariser = _cross_entropy(-0.2 * ((instances[:, None] - centres[None]) ** 2).sum(-1), labels)
    objective, metrics = learner.loss(params, episode, None)  # no key: no dropout
    np.testing.assert_allclose(metrics["contrastive"], regulariser, rtol=1e-4)
    np.testing.assert_allclose(objective, _cross_entropy(logits, qy) + 0.5 * regulariser, rtol=1e-4)
    np.testing.assert_allclose(metrics["loss"], _cross_entropy(logits, qy), rtol=1e-4)


def test_relabelling_the_classes_permutes_the_adapted_prototypes():
    learner, episode = _learner(), one_task(TASK)
    params = learner.init(jax.random.key(0), episode)
    relabel = jnp.array([2, 0, 1])  # class c becomes relabel[c]
    before = learner.adapt(params, episode.support, None)["prototypes"]
    after = learner.adapt(params, (episode.support_x, relabel[episode.support_y]), None)["prototypes"]
    np.testing.assert_allclose(after[relabel], before, rtol=1e-5, atol=1e-6)


def test_dropout_acts_in_meta_training_only():
    learner, episode = _learner(dropout=0.5), one_task(TASK)
    params = learner.init(jax.random.key(0), episode)
    losses = [float(learner.loss(params, episode, jax.random.key(k))[0]) for k in range(3)]
    assert len(set(losses)) == 3  # dropout draws from the key
    evaluations = [learner.evaluate(params, episode, jax.random.key(k)) for k in range(2)]
    np.testing.assert_array_equal(evaluations[0]["loss"], evaluations[1]["loss"])
    np.testing.assert_allclose(evaluations[0]["loss"], learner.loss(params, episode, None)[1]["loss"][None])


@pytest.mark.parametrize("contrastive", [0.0, 0.5])
def test_meta_training_lowers_the_query_loss(contrastive):
    learner = _learner(contrastive=contrastive, temperature=1.0, contrastive_temperature=1.0, dropout=0.1)
    state, history = metajax.train(learner, TASK, optax.adam(3e-3), key=jax.random.key(0), num_steps=200,
                                   meta_batch=16, steps_per_call=50, log_every=50, progress=False)  # fmt: skip
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [h["loss"] for h in history]
    result = metajax.evaluate(learner, state.params, TASK, key=jax.random.key(1), num_tasks=20)
    assert result["num_steps"] == 0 and result["accuracy"]["mean"][0] > 0.5


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="contrastive must be a finite weight >= 0, got -1"):
        _learner(contrastive=-1)
    with pytest.raises(ValueError, match=r"dropout must be a rate in \[0, 1\), got 1.0"):
        _learner(dropout=1.0)


def test_the_regulariser_weight_is_a_flag_of_feat_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(["train", "--algo", "maml", "--feat-contrastive", "0.1", "--out", str(tmp_path)])
    assert refused.value.code == 2
    assert "--feat-contrastive applies to --algo feat only, not --algo maml" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train", "--algo", "feat", "--task", "omniglot", "--out", str(tmp_path)])
    for weight in (0.5, -1.0):
        args.feat_contrastive, args.filters = weight, 8
        if weight < 0:
            with pytest.raises(ValueError, match="contrastive must be a finite weight >= 0"):
                cli.build_learner(args, 5)
        else:
            assert cli.build_learner(args, 5).contrastive == 0.5
