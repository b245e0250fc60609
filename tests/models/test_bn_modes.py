"""Batch-norm modes of Conv4 and ResNet-12, each against a computation written out by hand.

Transductive (the default) is today's network bit for bit; in support mode a query's
output depends only on the support set and on itself; per-step mode uses step k's
affine weights at step k, in the network and in MAML's inner loop; running mode keeps the
moving average of the query batches' statistics through meta-training (checkpointed with
the parameters) and normalises each input alone with it at evaluation.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import metajax
from metajax import losses, models, tasks
from metajax.checkpoint import Checkpointer

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


def test_channel_mean_is_the_mean_over_every_axis_but_the_last():
    x = np.random.default_rng(0).normal(3.0, 2.0, (7, 5, 4, 6)).astype(np.float32)
    got = models.layers.channel_mean(jnp.asarray(x))
    assert got.shape == (1, 1, 1, 6)
    np.testing.assert_allclose(got, x.astype(np.float64).mean(axis=(0, 1, 2), keepdims=True), rtol=1e-6)
    rows = x[:, 0, 0]
    np.testing.assert_allclose(models.layers.channel_mean(jnp.asarray(rows)), rows.mean(0, keepdims=True), rtol=1e-6)


def test_transductive_mode_is_the_hand_written_network():
    net = models.Conv4(filters=4, out=3, pool="stride", impl="xla")
    assert net.bn == "transductive" and net == models.Conv4(
        filters=4, out=3, pool="stride", impl="xla", bn="transductive"
    )
    params = net.init(jax.random.key(1), X)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # non-trivial BN
    # Equal up to float summation order: the library takes the means as products with ones.
    np.testing.assert_allclose(net.apply({"params": params}, X), _hand_conv4(params, X), rtol=1e-5, atol=1e-6)


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
        (dict(bn="batch"), {}, "Conv4.bn must be one of 'transductive', 'support', 'per_step', 'running', got 'batch'"),
        (dict(bn_steps=3), {}, "bn_steps=3 gives affine weights per inner step, which only bn='per_step' uses"),
        (dict(bn="per_step", bn_steps=0), {}, "Conv4.bn_steps must be a positive integer, got 0"),
        ({}, dict(context=X[:2]), "was given a context .* which only bn='support' uses"),
        (dict(bn="support"), dict(context=X[:2, :6]), "context must be inputs like x"),
    ],
)
def test_bad_batch_norm_mode_is_named(kwargs, call, message):
    with pytest.raises(ValueError, match=message):
        models.Conv4(filters=2, out=2, **kwargs).init(jax.random.key(0), X, **call)


@pytest.mark.parametrize("net", _backbones("running"), ids=["conv4", "resnet12"])
def test_running_mode_normalises_each_input_alone_at_evaluation(net):
    variables = net.init(jax.random.key(1), X)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, v: 0.3 * jnp.arange(v.size, dtype=v.dtype) + (1.0 if "var" in jax.tree_util.keystr(path) else 0.0),
        variables["batch_stats"],
    )
    variables = {"params": variables["params"], "batch_stats": stats}
    others = X.at[1:].set(jax.random.normal(jax.random.key(5), X[1:].shape))

    @jax.jit
    def outputs(variables):
        together = net.apply(variables, X, use_running_average=True)
        alone = jax.vmap(lambda x: net.apply(variables, x[None], use_running_average=True)[0])(X)
        return together, alone, net.apply(variables, others, use_running_average=True), net.apply(variables, X)

    together, alone, with_others, batch = outputs(variables)
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(with_others[0], together[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(batch, together, atol=1e-4)  # meta-training's batch statistics differ


def test_running_statistics_start_at_zero_mean_and_unit_variance():
    stats = models.Conv4(filters=2, out=2, bn="running").init(jax.random.key(0), X)["batch_stats"]
    assert sorted(stats) == [f"BatchStatNorm_{i}" for i in range(4)]
    for layer in stats.values():
        np.testing.assert_array_equal(layer["mean"], np.zeros(2))
        np.testing.assert_array_equal(layer["var"], np.ones(2))


IMAGES = jax.random.randint(jax.random.key(7), (5, 6, 8, 8, 1), 0, 256).astype(jnp.uint8)
TINY = tasks.FewShot(IMAGES, ways=2, shots=2, queries=2)


def _running_maml(inner_lr=0.4):
    net = models.Conv4(filters=2, out=2, bn="running", impl="xla")
    return metajax.MAML(net, inner_lr=inner_lr, objective=losses.cross_entropy)


def test_maml_in_running_mode_predicts_each_query_alone_with_the_statistics():
    learner = _running_maml()
    episode = jax.tree.map(lambda a: a[0], TINY.sample(jax.random.key(0), 1))
    params = learner.init(jax.random.key(1), episode)
    state = jax.tree.map(lambda v: v + 0.5, learner.init_model_state(jax.random.key(1), episode))
    changed = episode.query_x.at[1:].set(jax.random.normal(jax.random.key(2), episode.query_x[1:].shape))

    @jax.jit
    def predictions(params, state):
        adapted = learner.adapt(params, episode.support, None, model_state=state)
        alone = jax.vmap(lambda q: learner.predict(adapted, q[None])[0])(episode.query_x)
        at_start = learner.predict(learner.adapt(params, episode.support, None, model_state=start), episode.query_x)
        return learner.predict(adapted, episode.query_x), alone, learner.predict(adapted, changed), at_start

    start = learner.init_model_state(jax.random.key(1), episode)
    together, alone, with_changed, initial = predictions(params, state)
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(with_changed[0], together[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(initial, together, atol=1e-4)  # the statistics given are the ones used


class _Fixed:
    """The same meta-batch at every meta-step (so a test can follow the statistics by hand)."""

    kind = "classification"

    def __init__(self, episodes):
        self.episodes = episodes

    def sample(self, key, num_tasks):
        del key
        return jax.tree.map(lambda a: a[:num_tasks], self.episodes)


def test_running_statistics_are_the_moving_average_of_the_query_batch_statistics():
    episodes = TINY.sample(jax.random.key(3), 2)
    learner, task, opt, lr = _running_maml(0.4), _Fixed(episodes), optax.sgd(0.5), 0.4
    net = learner.model
    state = metajax.init_state(learner, task, opt, jax.random.key(0))
    expected = {"mean": np.zeros(2), "var": np.ones(2)}

    def first_layer_stats(w, x):  # conv, bias; its mean and biased variance over examples and pixels
        kernel, bias = w["Conv_0"]["kernel"], w["Conv_0"]["bias"]
        dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
        h = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dn) + bias.reshape(1, 1, 1, -1)
        return np.mean(h, axis=(0, 1, 2)), np.var(h, axis=(0, 1, 2))

    def support_loss(w, sx, sy):  # batch statistics, as the inner loop of meta-training
        return losses.cross_entropy(net.apply({"params": w}, sx), sy)[0]

    for step in (1, 2, 3):
        before = jax.device_get(state.params)
        means, variances = [], []
        for i in range(2):
            sx, sy, qx = episodes.support_x[i], episodes.support_y[i], episodes.query_x[i]
            grads = jax.grad(support_loss)(before, sx, sy)
            adapted = jax.tree.map(lambda w, g: w - lr * g, before, grads)  # one inner step
            mean, var = first_layer_stats(adapted, qx)
            means.append(mean)
            variances.append(var)
        expected = {
            "mean": 0.9 * expected["mean"] + 0.1 * np.mean(means, axis=0),
            "var": 0.9 * expected["var"] + 0.1 * np.mean(variances, axis=0),
        }
        state, _ = metajax.train(
            learner, task, opt, key=None, num_steps=step, meta_batch=2, state=state, progress=False, log_every=1
        )
        got = state.model_state["batch_stats"]["BatchStatNorm_0"]
        np.testing.assert_allclose(got["mean"], expected["mean"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["var"], expected["var"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(expected["mean"], 0.0)


def test_running_statistics_are_checkpointed_and_resumed(tmp_path):
    learner, opt = _running_maml(), optax.adam(1e-2)
    run = dict(key=jax.random.key(4), meta_batch=2, progress=False, log_every=3)
    full, _ = metajax.train(learner, TINY, opt, num_steps=6, **run)
    checkpointer = Checkpointer(tmp_path, every=3)
    metajax.train(learner, TINY, opt, num_steps=3, checkpointer=checkpointer, **run)
    like = metajax.init_state(learner, TINY, opt, jax.random.key(0))
    restored, _ = checkpointer.restore(like)
    checkpointer.close()
    assert int(restored.step) == 3
    resumed, _ = metajax.train(learner, TINY, opt, num_steps=6, state=restored, **run)
    jax.tree.map(np.testing.assert_array_equal, full.model_state, resumed.model_state)
    jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)
    moved = full.model_state["batch_stats"]["BatchStatNorm_0"]["mean"]
    assert not np.allclose(moved, 0.0)
    summary = metajax.evaluate(learner, full.params, TINY, key=jax.random.key(5), num_tasks=2,
                               model_state=full.model_state)  # fmt: skip
    assert len(summary["accuracy"]["mean"]) == 2


def test_running_statistics_are_asked_for_where_they_exist():
    with pytest.raises(ValueError, match="Conv4 was called with use_running_average=True, which needs the running"):
        models.Conv4(filters=2, out=2).init(jax.random.key(0), X, use_running_average=True)
    with pytest.raises(ValueError, match=r"Conv4.bn_momentum must be a number in \[0, 1\), got 1.0"):
        models.Conv4(filters=2, out=2, bn="running", bn_momentum=1.0).init(jax.random.key(0), X)
    learner = _running_maml()
    episode = jax.tree.map(lambda a: a[0], TINY.sample(jax.random.key(0), 1))
    params = learner.init(jax.random.key(1), episode)
    start = learner.init_model_state(jax.random.key(1), episode)
    with pytest.raises(ValueError, match="whose statistics from meta-training normalise at evaluation: pass"):
        learner.evaluate(params, episode, None)
    with pytest.raises(ValueError, match="model_state holds running statistics, which only a model with bn='running'"):
        metajax.MAML(models.Conv4(filters=2, out=2)).evaluate(params, episode, None, model_state=start)
    with pytest.raises(TypeError, match="model_state holds arrays; ProtoNet keeps no state"):
        metajax.evaluate(metajax.ProtoNet(models.Conv4(filters=2), ways=2), {}, TINY, key=jax.random.key(0),
                         num_tasks=2, model_state={"batch_stats": {"m": jnp.zeros(2)}})  # fmt: skip
