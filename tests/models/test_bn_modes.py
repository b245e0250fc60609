"""Batch-norm modes of Conv4 and ResNet-12, each against a computation written out by hand.

Transductive (the default) is today's network bit for bit; in support mode a query's
output depends only on the support set and on itself; per-step mode uses step k's
affine weights at step k, in the network and in MAML's inner loop.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import metajax
from metajax import losses, models

X = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))


def _hand_conv4(params, x, filters_stride=2):
    """Conv4 (strided, xla) as it was before batch-norm modes: conv, batch statistics, ReLU; then the head."""
    for i in range(4):
        conv, norm = params[f"Conv_{i}"], params[f"BatchStatNorm_{i}"]
        dn = lax.conv_dimension_numbers(x.shape, conv["kernel"].shape, ("NHWC", "HWIO", "NHWC"))
        x = lax.conv_general_dilated(x, conv["kernel"], (filters_stride,) * 2, "SAME", (1, 1), (1, 1), dn)
        x = x + conv["bias"].reshape(1, 1, 1, -1)
        mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2), keepdims=True)
        x = (x - mean) * lax.rsqrt(var + 1e-5) * norm["scale"].reshape(1, 1, 1, -1) + norm["bias"].reshape(1, 1, 1, -1)
        x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None]


def test_transductive_mode_is_todays_network_bit_for_bit():
    net = models.Conv4(filters=4, out=3, pool="stride", impl="xla")
    assert net.bn == "transductive" and net == models.Conv4(
        filters=4, out=3, pool="stride", impl="xla", bn="transductive"
    )
    params = net.init(jax.random.key(1), X)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # non-trivial BN
    np.testing.assert_array_equal(net.apply({"params": params}, X), _hand_conv4(params, X))


def _backbones(bn, **kwargs):
    return [
        models.Conv4(filters=4, out=3, bn=bn, impl="xla", **kwargs),
        models.ResNet12(channels=(2, 2, 2, 2), out=3, bn=bn, impl="xla", **kwargs),
    ]


@pytest.mark.parametrize("net", _backbones("support"), ids=["conv4", "resnet12"])
def test_support_mode_query_outputs_do_not_depend_on_the_other_queries(net):
    support, queries = X[:3], X[3:]
    params = net.init(jax.random.key(1), support)
    others = queries.at[1:].set(jax.random.normal(jax.random.key(5), queries[1:].shape))

    @jax.jit
    def outputs(params):
        alone = jax.vmap(lambda q: net.apply(params, q[None], context=support)[0])(queries)
        with_others = net.apply(params, others, context=support)
        support_alone = (net.apply(params, support, context=support), net.apply(params, support))
        return (
            net.apply(params, queries, context=support),
            alone,
            with_others,
            support_alone,
            net.apply(params, queries),
        )

    together, alone, with_others, support_alone, transductive = outputs(params)
    np.testing.assert_allclose(with_others[0], together[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    # The support set's own outputs are its transductive ones; the queries' differ from theirs.
    np.testing.assert_allclose(*support_alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(transductive, together, atol=1e-4)


def test_maml_in_support_mode_predicts_each_query_alone():
    learner = metajax.MAML(models.Conv4(filters=4, out=3, bn="support"), inner_lr=0.4, objective=losses.cross_entropy)
    episode = metajax.Episode(X[:3], jnp.array([0, 1, 2]), X[3:], jnp.array([0, 1, 2]))

    @jax.jit
    def together_and_alone(params):
        adapted = learner.adapt(params, episode.support, None)
        alone = jax.vmap(lambda q: learner.predict(adapted, q[None])[0])(episode.query_x)
        return learner.predict(adapted, episode.query_x), alone

    together, alone = together_and_alone(learner.init(jax.random.key(0), episode))
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", _backbones("per_step", bn_steps=3), ids=["conv4", "resnet12"])
def test_per_step_mode_uses_step_k_weights_at_step_k(net):
    params = net.init(jax.random.key(1), X)["params"]
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape), params)
    single = net.clone(bn="transductive", bn_steps=1)
    apply, apply_single = jax.jit(net.apply), jax.jit(single.apply)
    for k in (0, 1, 2, 3):  # past the last row, the last row's weights
        row = min(k, 2)
        # The same network with one (scale, offset) per layer: row ``k`` of each.
        rows = jax.tree_util.tree_map_with_path(
            lambda path, p, row=row: p[row] if "BatchStatNorm" in jax.tree_util.keystr(path) else p, params
        )
        np.testing.assert_allclose(
            apply({"params": params}, X, step=k), apply_single({"params": rows}, X), rtol=1e-6, atol=1e-6
        )


def test_maml_inner_step_k_uses_batch_norm_row_k():
    net = models.Conv4(filters=4, out=3, bn="per_step", bn_steps=2, impl="xla")
    learner = metajax.MAML(net, inner_lr=0.4, inner_steps=2, objective=losses.cross_entropy)
    sy = jnp.array([0, 1, 2])
    episode = metajax.Episode(X[:3], sy, X[3:], sy)
    params = learner.init(jax.random.key(1), episode)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(4), p.shape), params)

    def support_loss(w, k):
        return losses.cross_entropy(net.apply({"params": w}, episode.support_x, step=k), sy)[0]

    @jax.jit
    def by_learner_and_by_hand(params):
        adapted = learner.adapt(params, episode.support, None)
        w1 = jax.tree.map(lambda w, g: w - 0.4 * g, params, jax.grad(support_loss)(params, 0))
        w2 = jax.tree.map(lambda w, g: w - 0.4 * g, w1, jax.grad(support_loss)(w1, 1))
        # Queries: before adaptation row 0; after step k (1-based) row k - 1.
        accuracy = [
            losses.cross_entropy(net.apply({"params": w}, episode.query_x, step=row), sy)[1]["accuracy"]
            for w, row in ((params, 0), (w1, 0), (w2, 1))
        ]
        evaluated = learner.evaluate(params, episode, None)["accuracy"]
        learned = (adapted.weights, learner.predict(adapted, episode.query_x), evaluated)
        return learned, (w2, net.apply({"params": w2}, episode.query_x, step=1), jnp.stack(accuracy))

    learned, by_hand = by_learner_and_by_hand(params)
    chex.assert_trees_all_close(learned, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "call", "message"),
    [
        (dict(bn="batch"), {}, "Conv4.bn must be one of 'transductive', 'support', 'per_step', got 'batch'"),
        (dict(bn_steps=3), {}, "bn_steps=3 gives affine weights per inner step, which only bn='per_step' uses"),
        (dict(bn="per_step", bn_steps=0), {}, "Conv4.bn_steps must be a positive integer, got 0"),
        ({}, dict(context=X[:2]), "was given a context .* which only bn='support' uses"),
        (dict(bn="support"), dict(context=X[:2, :6]), "context must be inputs like x"),
    ],
)
def test_bad_batch_norm_mode_is_named(kwargs, call, message):
    with pytest.raises(ValueError, match=message):
        models.Conv4(filters=2, out=2, **kwargs).init(jax.random.key(0), X, **call)
