"""The in-context Transformer: it reads the support set, ignores its order, answers each query on its own."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import VectorTasks, assert_queries_answered_alone, one_task
from metajax import learner as registry
from metajax import models, tasks
from metajax.algorithms.protonet import flat_embedding
from metajax.app import cli

SINE = tasks.Sinusoid(shots=5, queries=6)


def _learner(outputs: int = 1, tied_keys: bool = True):
    embed = models.MLP(hidden=(16,), out=None)
    return metajax.TransformerICL(embed, outputs=outputs, dim=16, depth=2, heads=2, tied_keys=tied_keys)


@pytest.mark.parametrize("tied_keys", [True, False])
def test_prediction_ignores_the_support_order_and_reads_the_labels(tied_keys):
    learner, episode = _learner(tied_keys=tied_keys), one_task(SINE)
    params = learner.init(jax.random.key(0), episode)
    out = learner.predict(learner.adapt(params, episode.support, None), episode.query_x)
    perm = jnp.array([3, 0, 4, 2, 1])
    permuted = (episode.support_x[perm], episode.support_y[perm])
    np.testing.assert_allclose(learner.predict(learner.adapt(params, permuted, None), episode.query_x), out, rtol=1e-5)
    other = (episode.support_x, -episode.support_y)  # other targets, same inputs: the answer must change
    assert not np.allclose(learner.predict(learner.adapt(params, other, None), episode.query_x), out, atol=1e-4)


@pytest.mark.parametrize("feature_norm", [True, False])
def test_feature_norm_makes_the_tokens_blind_to_the_features_scale_and_offset(feature_norm):
    # A Conv4 embedding's features are about 20 times a one-hot label's norm; normalised, a
    # positive scale and a common offset of the features change nothing.
    episode = one_task(VectorTasks(ways=3))
    embed = models.MLP(hidden=(16,), out=None)
    learner = metajax.TransformerICL(embed, outputs=3, dim=16, heads=2, feature_norm=feature_norm)
    params = learner.init(jax.random.key(0), episode)
    adapted = learner.adapt(params, episode.support, None)
    fq = flat_embedding(embed, params["embed"], episode.query_x)
    net, variables = learner.sequence_model(), {"params": params["sequence"]}
    out = net.apply(variables, adapted["features"], adapted["labels"], fq)
    moved = net.apply(variables, 20 * adapted["features"] + 3, adapted["labels"], 20 * fq + 3)
    assert np.allclose(moved, out, atol=1e-4) == feature_norm


def test_each_query_is_answered_independently_of_the_others():
    assert_queries_answered_alone(_learner(), one_task(SINE))


def test_meta_training_lowers_the_query_loss_on_sinusoids_and_on_classification():
    for task, learner in ((SINE, _learner()), (VectorTasks(ways=3), _learner(outputs=3))):
        state, history = metajax.train(learner, task, optax.adam(3e-3), key=jax.random.key(0), num_steps=300,
                                       meta_batch=16, steps_per_call=50, log_every=50, progress=False)  # fmt: skip
        assert history[-1]["loss"] < 0.7 * history[0]["loss"], [h["loss"] for h in history]
        result = metajax.evaluate(learner, state.params, task, key=jax.random.key(1), num_tasks=20)
        assert result["num_steps"] == 0  # no gradient steps at test time


def test_bad_configuration_and_targets_are_named():
    with pytest.raises(ValueError, match="dim must be a multiple of heads, got dim=10 and heads=4"):
        metajax.TransformerICL(models.MLP(out=None), outputs=1, dim=10, heads=4)
    learner, episode = _learner(outputs=2), one_task(SINE)
    with pytest.raises(ValueError, match=r"regression targets must have shape \[examples, outputs=2\], got shape"):
        learner.init(jax.random.key(0), episode)


def test_metajax_train_reports_the_query_mse_at_step_0(tmp_path):
    argv = "train --algo transformer --shots 5 --meta-batch 4 --steps 20 --steps-per-call 10 --log-every 10"
    assert cli.main([*argv.split(), "--eval-tasks", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval"]["num_steps"] == 0 and len(metrics["eval"]["mse"]["mean"]) == 1


@pytest.mark.parametrize("algo", ["transformer", "snail"])
def test_the_registry_normalises_features_for_classification_only(algo):
    def build(kind, outputs):
        return registry.build(algo, registry.Spec(kind, outputs, lambda out: models.MLP(out=out)))

    assert build("classification", 5).feature_norm and not build("regression", 1).feature_norm
