"""SNAIL: causal over the support sequence, each query at the end of its own sequence, as the paper."""

from __future__ import annotations

import dataclasses
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import VectorTasks, assert_queries_answered_alone, one_task
from metajax import models, tasks
from metajax.app import cli

SINE = tasks.Sinusoid(shots=5, queries=4)
ATTENTION = ((6, 4), (8, 5), (6, 3))


def _learner(outputs: int = 1, attention=ATTENTION, filters: int = 7, feature_norm: bool = False):
    embed = models.MLP(hidden=(16,), out=None)
    return metajax.SNAIL(embed, outputs, attention=attention, filters=filters, feature_norm=feature_norm)


def _reference(sequence_params: dict, tokens: np.ndarray, attention, filters: int) -> np.ndarray:
    """The paper's SNAIL on one whole sequence ``tokens [T, C]``, in NumPy: the last token's outputs.

    Causal convolutions by zero padding on the left, attention by an upper-triangular mask.
    Flax names the Dense layers in creation order: per dense block filter then gate, per
    attention block query, key, value; the read-out last.
    """
    dense = iter(sequence_params[f"Dense_{i}"] for i in range(len(sequence_params) - 1))

    def apply(p, x):
        return x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])

    h, length = tokens, tokens.shape[0]
    for block, (key_size, _) in enumerate(attention):
        if block:
            for d in [2**i for i in range(math.ceil(math.log2(length)))]:
                earlier = np.concatenate([np.zeros((d, h.shape[1])), h[:-d]])[:length]
                taps = np.concatenate([earlier, h], axis=1)
                xf, xg = apply(next(dense), taps), apply(next(dense), taps)
                h = np.concatenate([h, np.tanh(xf) / (1 + np.exp(-xg))], axis=1)
        q, k, v = (apply(next(dense), h) for _ in range(3))
        logits = q @ k.T / np.sqrt(key_size) + np.triu(np.full((length, length), -np.inf), 1)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        h = np.concatenate([h, (weights / weights.sum(axis=1, keepdims=True)) @ v], axis=1)
    assert next(dense, None) is None, "the reference must use every layer"
    return apply(sequence_params["readout"], h[-1])


def _unit(features: np.ndarray, norm: dict) -> np.ndarray:
    """Layer norm (flax's epsilon 1e-6) with the learned scale and offset, then divided by sqrt(F)."""
    centred = features - features.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-6) * norm["scale"] + norm["bias"]
    return normed / math.sqrt(features.shape[-1])


@pytest.mark.parametrize("feature_norm", [False, True])
@pytest.mark.parametrize("task, outputs", [(SINE, 1), (VectorTasks(ways=3, shots=2, queries=2), 3)])
def test_every_query_equals_the_papers_sequence_of_the_support_set_then_that_query(task, outputs, feature_norm):
    learner, episode = _learner(outputs, feature_norm=feature_norm), one_task(task)
    params = learner.init(jax.random.key(0), episode)
    if feature_norm:  # a learned scale and offset other than the initial ones and zeros
        width = params["sequence"]["features"]["scale"].shape
        k_scale, k_bias = jax.random.split(jax.random.key(1))
        params["sequence"]["features"] = {"scale": 1 + jax.random.normal(k_scale, width),
                                          "bias": jax.random.normal(k_bias, width)}  # fmt: skip
    out = learner.predict(learner.adapt(params, episode.support, None), episode.query_x)
    embed = metajax.algorithms.protonet.flat_embedding
    fs = np.asarray(embed(learner.embed, params["embed"], episode.support_x), np.float64)
    fq = np.asarray(embed(learner.embed, params["embed"], episode.query_x), np.float64)
    sy = episode.support_y
    labels = np.asarray(jax.nn.one_hot(sy, outputs) if sy.dtype == jnp.int32 else sy, np.float64)
    seq_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params["sequence"])
    if feature_norm:  # metajax's departure from the paper: unit-norm features beside the labels
        norm = seq_params.pop("features")
        fs, fq = _unit(fs, norm), _unit(fq, norm)
    for i in range(fq.shape[0]):
        tokens = np.concatenate([np.concatenate([fs, labels], 1), np.concatenate([fq[i], np.zeros(outputs)])[None]])
        np.testing.assert_allclose(out[i], _reference(seq_params, tokens, ATTENTION, 7), rtol=2e-4, atol=2e-5)


def test_the_support_order_is_read_and_queries_do_not_see_each_other():
    learner, episode = _learner(), one_task(SINE)
    together = assert_queries_answered_alone(learner, episode)
    params = learner.init(jax.random.key(0), episode)
    perm = jnp.array([4, 3, 2, 1, 0])  # a sequence model: the order of the support set matters
    reversed_support = learner.adapt(params, (episode.support_x[perm], episode.support_y[perm]), None)
    assert not np.allclose(learner.predict(reversed_support, episode.query_x), together, atol=1e-5)


def test_the_tc_blocks_cover_the_whole_sequence():
    assert metajax.algorithms.snail.dilations(2) == (1,)
    assert metajax.algorithms.snail.dilations(6) == (1, 2, 4)  # 5-way 1-shot + the query: receptive field 8
    assert metajax.algorithms.snail.dilations(101) == (1, 2, 4, 8, 16, 32, 64)  # 20-way 5-shot


def test_meta_training_lowers_the_query_loss_and_is_deterministic():
    task, learner = VectorTasks(ways=3), _learner(outputs=3)
    runs = [
        metajax.train(
            learner,
            task,
            optax.adam(3e-3),
            key=jax.random.key(0),
            num_steps=200,
            meta_batch=16,
            steps_per_call=50,
            log_every=50,
            progress=False,
        )
        for _ in range(2)
    ]
    (state, history), (again, _) = runs
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [h["loss"] for h in history]
    chex.assert_trees_all_equal(state.params, again.params)
    result = metajax.evaluate(learner, state.params, task, key=jax.random.key(1), num_tasks=20)
    assert result["num_steps"] == 0 and result["accuracy"]["mean"][0] > 0.5


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match=r"attention must be a non-empty sequence of \(key size, value size\) pairs"):
        _learner(attention=((8,),))
    with pytest.raises(ValueError, match="filters must be a positive integer"):
        _learner(filters=0)


def test_metajax_train_snail_on_sinusoid_reports_step_0(tmp_path):
    argv = "train --algo snail --shots 5 --meta-batch 4 --steps 10 --steps-per-call 5 --log-every 5"
    assert cli.main([*argv.split(), "--eval-tasks", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval"]["num_steps"] == 0 and len(metrics["eval"]["mse"]["mean"]) == 1


def test_the_support_sequence_is_shuffled_by_the_key_only():
    learner, episode = _learner(), one_task(SINE)
    params = learner.init(jax.random.key(0), episode)
    key = jax.random.key(3)
    order = jax.random.permutation(key, 5)
    shuffled = learner.predict(learner.adapt(params, episode.support, key), episode.query_x)
    by_hand = learner.adapt(params, (episode.support_x[order], episode.support_y[order]), None)
    np.testing.assert_allclose(shuffled, learner.predict(by_hand, episode.query_x), rtol=1e-5, atol=1e-6)
    fixed = dataclasses.replace(learner, shuffle_support=False)
    np.testing.assert_allclose(
        fixed.predict(fixed.adapt(params, episode.support, key), episode.query_x),
        learner.predict(learner.adapt(params, episode.support, None), episode.query_x),
        rtol=1e-6,
    )
