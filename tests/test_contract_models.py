"""The contract for models from the rest of the ecosystem: a Flax NNX and an equinox MLP through MAML and ProtoNet.

Each runs init, loss, adapt, predict, evaluate and jitted meta-steps with ``train()``
that lower a held-out loss without tracing again. The reference computation is the Linen
MLP whose weights the NNX and equinox MLPs copy: the same MAML meta-gradient and the same
ProtoNet loss and gradient, to float tolerance.
"""

from __future__ import annotations

import chex
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import metajax
from helpers import CountingLearner, VectorTasks, one_task
from metajax import models

WAYS, DIM, HIDDEN = 3, 8, 8
TASK = VectorTasks(ways=WAYS, dim=DIM)
OPTIMIZER = optax.adam(3e-2)


class NNXMLP(nnx.Module):
    """Linear layers of ``sizes`` with ReLU between them, as ``models.MLP(hidden=sizes[1:-1], out=sizes[-1])``."""

    def __init__(self, sizes, *, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def _linen_layers(params):
    return [params[f"Dense_{i}"] for i in range(len(params))]


def nnx_copy(linen_params) -> NNXMLP:
    """An NNX MLP with the weights of a Linen ``models.MLP``'s parameters."""
    layers = _linen_layers(linen_params)
    net = NNXMLP([layers[0]["kernel"].shape[0], *(p["kernel"].shape[1] for p in layers)], rngs=nnx.Rngs(5))
    for layer, p in zip(net.layers, layers, strict=True):
        layer.kernel[...], layer.bias[...] = p["kernel"], p["bias"]
    return net


def equinox_copy(linen_params):
    """An ``eqx.nn.MLP`` with the weights of a Linen ``models.MLP``'s parameters (one hidden width)."""
    eqx = pytest.importorskip("equinox")
    layers = _linen_layers(linen_params)
    n_in, width, n_out = layers[0]["kernel"].shape[0], layers[0]["kernel"].shape[1], layers[-1]["kernel"].shape[1]
    net = eqx.nn.MLP(n_in, n_out, width, len(layers) - 1, key=jax.random.key(5))
    weights = [w for p in layers for w in (p["kernel"].T, p["bias"])]  # equinox: weight [out, in]
    return eqx.tree_at(lambda m: [w for layer in m.layers for w in (layer.weight, layer.bias)], net, weights)


def as_linen(source, grads):
    """``grads`` of an NNX or equinox MLP's parameters in the Linen MLP's layout."""
    if source == "nnx":
        layers = [grads["layers"][i] for i in range(len(grads["layers"]))]
    else:  # equinox
        layers = [{"kernel": layer.weight.T, "bias": layer.bias} for layer in grads.layers]
    return {f"Dense_{i}": {"kernel": p["kernel"], "bias": p["bias"]} for i, p in enumerate(layers)}


COPY = {"nnx": lambda p: models.from_nnx(nnx_copy(p)), "equinox": lambda p: models.from_equinox(equinox_copy(p))}


def _linen(out):
    return models.MLP(hidden=(HIDDEN,), out=out)


def _learner(name, model):
    if name == "maml":
        return metajax.MAML(model, inner_lr=0.1, inner_steps=2)
    return metajax.ProtoNet(model, ways=WAYS)


def _outputs(name):
    return WAYS if name == "maml" else 4  # MAML: logits; ProtoNet: a 4-D embedding


CASES = [(source, name) for source in COPY for name in ("maml", "protonet")]


@pytest.mark.parametrize(("source", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_model_runs_the_learner_contract_and_trains_without_retracing(source, name):
    episode = one_task(TASK)
    linen_params = _linen(_outputs(name)).init(jax.random.key(0), episode.support_x)["params"]
    learner = _learner(name, COPY[source](linen_params))
    assert hash(learner) == hash(learner)  # a configuration jit can key on
    params = learner.init(jax.random.key(1), episode)

    @jax.jit  # one compilation for the whole per-task contract
    def one(params, key):
        k_loss, k_adapt, k_eval = jax.random.split(key, 3)
        outputs = learner.predict(learner.adapt(params, episode.support, k_adapt), episode.query_x)
        return learner.loss(params, episode, k_loss), outputs, learner.evaluate(params, episode, k_eval, 2)

    (loss, metrics), outputs, evaluated = one(params, jax.random.key(2))
    assert loss.shape == () and np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert outputs.shape == (episode.query_y.shape[0], WAYS)
    steps = 3 if name == "maml" else 1
    assert all(v.shape == (steps,) and np.all(np.isfinite(v)) for v in evaluated.values())

    counting = CountingLearner(learner)
    run = dict(num_steps=100, meta_batch=4, steps_per_call=50, log_every=50, progress=False)
    state, history = metajax.train(counting, TASK, OPTIMIZER, key=jax.random.key(7), **run)
    traced = counting.traces
    again, _ = metajax.train(counting, TASK, OPTIMIZER, key=jax.random.key(7), **run)
    assert traced > 0 and counting.traces == traced
    chex.assert_trees_all_equal(state.params, again.params)
    assert jax.tree.map(lambda a: a.dtype, state.params) == jax.tree.map(lambda a: a.dtype, params)

    # Each entry is the mean over 50 meta-steps of 4 tasks: the second 50 have the lower loss.
    assert history[1]["loss"] < 0.9 * history[0]["loss"]


LEARNERS = {  # learner on a model, and the Linen model's outputs
    "maml": (lambda model: metajax.MAML(model, inner_lr=0.5, inner_steps=2), WAYS),
    "protonet": (lambda model: metajax.ProtoNet(model, ways=WAYS), 4),
}


@pytest.mark.parametrize("learner_name", list(LEARNERS))
@pytest.mark.parametrize("source", list(COPY))
def test_loss_and_meta_gradient_equal_the_linen_models(source, learner_name):
    build, outputs = LEARNERS[learner_name]
    episode = one_task(TASK)
    linen = build(_linen(outputs))
    linen_params = linen.init(jax.random.key(0), episode)
    adapted = build(COPY[source](linen_params))

    def value_and_grad(learner, params):
        return jax.value_and_grad(lambda p: learner.loss(p, episode, jax.random.key(1))[0])(params)

    expected_loss, expected_grads = value_and_grad(linen, linen_params)
    loss, grads = value_and_grad(adapted, adapted.init(jax.random.key(0), episode))
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    chex.assert_trees_all_close(as_linen(source, grads), expected_grads, rtol=1e-4, atol=1e-6)
