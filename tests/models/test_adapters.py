"""NNX and equinox modules as pure-function models: what is learned, what is held, the errors, and without equinox."""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import metajax
from metajax import models

X = jax.random.normal(jax.random.key(0), (6, 3))


class NormNet(nnx.Module):
    """Linear -> BatchNorm -> ReLU -> Linear."""

    def __init__(self, rngs):
        self.dense, self.norm = nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.dense(x))))


class LinenNormNet(nn.Module):
    """``NormNet`` in Linen with metajax's batch-statistics normalisation."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(models.BatchStatNorm()(nn.Dense(4)(x)))
        return nn.Dense(2)(h)


def test_nnx_params_are_learned_and_batch_norm_uses_the_batch_statistics_without_updating_its_averages():
    net = NormNet(nnx.Rngs(0))
    net.norm.mean[...] = jnp.full((4,), 3.0)  # averages a call in training mode must neither use nor change
    model = models.from_nnx(net)
    params = model.init(None, X)["params"]
    assert sorted(params) == ["dense", "norm", "out"] and sorted(params["norm"]) == ["bias", "scale"]
    linen = {"Dense_0": params["dense"], "BatchStatNorm_0": params["norm"], "Dense_1": params["out"]}
    np.testing.assert_allclose(
        model.apply({"params": params}, X), LinenNormNet().apply({"params": linen}, X), rtol=1e-4, atol=1e-5
    )
    # Differentiated per task under vmap, as a learner runs it: the averages stay untouched.
    per_task = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
    jax.jit(jax.vmap(jax.grad(lambda p, x: jnp.sum(model.apply({"params": p}, x)))))(per_task, jnp.stack([X, -X]))
    np.testing.assert_array_equal(net.norm.mean[...], 3.0)

    net.eval()  # a module in evaluation mode normalises with its stored averages
    np.testing.assert_allclose(models.from_nnx(net).apply({"params": params}, X), net(X), rtol=1e-6)


def test_init_copies_the_weights_and_ignores_the_key():
    net = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    model = models.from_nnx(net)
    first, second = model.init(jax.random.key(1), X)["params"], model.init(jax.random.key(2), X)["params"]
    np.testing.assert_array_equal(first["kernel"], net.kernel[...])
    np.testing.assert_array_equal(first["kernel"], second["kernel"])
    # Separate buffers: train() donates its parameters, which must not delete the model's own.
    assert first["kernel"] is not second["kernel"] and first["kernel"] is not net.kernel[...]


def test_a_learner_holding_an_adapted_model_is_hashable_and_equal_by_identity():
    model = models.from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    learner = metajax.MAML(model)
    assert hash(learner) == hash(metajax.MAML(model)) and learner == metajax.MAML(model)
    assert learner != metajax.MAML(models.from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0))))


def test_as_model_picks_the_adapter_and_names_what_it_takes():
    linen = models.MLP()
    adapted = models.from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    assert models.as_model(linen) is linen and models.as_model(adapted) is adapted
    assert models.as_model(nnx.Linear(3, 2, rngs=nnx.Rngs(0))).source == "nnx"
    with pytest.raises(TypeError, match="module must be a flax.linen.Module, a flax.nnx.Module or an equinox.Module.*"
                       "got str: 'mlp'"):  # fmt: skip
        models.as_model("mlp")


def test_errors_name_the_argument_the_value_and_what_was_expected():
    model = models.from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    params = model.init(None, X)["params"]
    with pytest.raises(TypeError, match="from_nnx's module must be a flax.nnx.Module, got MLP"):
        models.from_nnx(models.MLP())
    expected = r"the variables of this nnx model must be \{'params': params\}, got \['batch_stats', 'params'\]"
    with pytest.raises(ValueError, match=expected):
        model.apply({"params": params, "batch_stats": {}}, X)
    with pytest.raises(ValueError, match="params do not fit this nnx model: expected the structure"):
        model.apply({"params": {"kernel": params["kernel"]}}, X)
    with pytest.raises(TypeError, match="must be floating point, got dtype int32"):
        metajax.MAML(model).predict(params, jnp.zeros((4, 3), jnp.int32))


def test_equinox_models_are_vmapped_per_example_or_called_on_the_batch():
    eqx = pytest.importorskip("equinox")

    class Affine(eqx.Module):
        weight: jax.Array
        shift: jax.Array  # integers: held fixed, not a meta-parameter

        def __call__(self, x):
            return x @ self.weight + jnp.expand_dims(self.shift, tuple(range(x.ndim - 1)))

    module = Affine(jax.random.normal(jax.random.key(1), (3, 2)), jnp.arange(2))
    per_example, batched = models.from_equinox(module), models.from_equinox(module, batched=True)
    params = per_example.init(None, X)["params"]
    assert params.shift is None and params.weight.shape == (3, 2)
    expected = X @ module.weight + module.shift[None]
    np.testing.assert_allclose(per_example.apply({"params": params}, X), expected, rtol=1e-6)
    np.testing.assert_allclose(batched.apply({"params": params}, X), expected, rtol=1e-6)
    assert models.as_model(module).source == "equinox"
    with pytest.raises(TypeError, match="from_equinox's module must be an equinox.Module, got Linear"):
        models.from_equinox(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    stateful = eqx.nn.BatchNorm(3, axis_name="batch", mode="batch")
    with pytest.raises(ValueError, match=r"holds state \(eqx.nn.StateIndex\) at \.batch_counter, \.batch_state_index"):
        models.from_equinox(stateful)


def test_without_equinox_the_errors_name_the_extra(monkeypatch):
    # metajax itself never imports equinox (tests/test_layout.py checks it in a fresh process).
    monkeypatch.setitem(sys.modules, "equinox", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"equinox models need the equinox package: pip install 'metajax\[equinox\]'"):
        models.from_equinox(object())
    with pytest.raises(TypeError, match=r"\(equinox is not installed: pip install 'metajax\[equinox\]'\); got object"):
        models.as_model(object())
