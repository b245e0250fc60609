"""One contract suite over every registered learner and every task kind it supports.

Meta-learners (every ``Learner``, and OML's meta-training ``MetaObjective``): protocol and
frozen configuration, shapes and finite loss, the batch gradient equals the mean of the
per-task gradients (vmap and map), no retrace across steps and across ``train()`` calls,
the same seed gives the same run, dtypes kept. Online learners: protocol, shapes and
finite metrics of one update, no retrace over a stream, the same key gives the same
stream result, dtypes kept.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import CountingLearner, Flatten, VectorTasks, one_task
from metajax import learner as registry
from metajax import models, tasks
from metajax.training import batch_value_and_grad

WAYS = 3
TASKS = {"regression": tasks.Sinusoid(shots=4, queries=3), "classification": VectorTasks(ways=WAYS)}
OPTIMIZER = optax.adam(1e-3)  # one object, so equal configurations share one compiled program


def _spec(kind: str) -> registry.Spec:
    return registry.Spec(
        kind,
        1 if kind == "regression" else WAYS,
        lambda out: nn.Sequential([Flatten(), models.MLP(hidden=(8,), out=out)]),
        inner_lr=0.05,
        inner_steps=1,
    )


def _build(name: str, kind: str):
    return registry.build(name, _spec(kind), reset=kind == "classification")


# Every learner on every task kind it supports for the protocol and shape checks; the
# compiled checks (gradients, training, streams) once per learner, on its first kind:
# the code paths of the two kinds differ only in the objective, which the first covers.
META = [
    (name, kind)
    for name in registry.names()
    if registry.entry(name).family != "continual" or name == "oml"  # OML meta-trains as a MetaObjective
    for kind in registry.entry(name).kinds
]
ONLINE = [(name, kind) for name in registry.names(family="continual") for kind in registry.entry(name).kinds]
META_ONE = [(name, registry.entry(name).kinds[0]) for name in dict(META)]
ONLINE_ONE = [(name, registry.entry(name).kinds[0]) for name in dict(ONLINE)]


def test_the_suite_covers_every_registered_learner():
    assert {name for name, _ in META} | {name for name, _ in ONLINE} == set(registry.names())
    # 7 gradient learners (MAML++ among them) x 2 kinds + 2 metric ones (classification) + the in-context
    # Transformer and SNAIL x 2 kinds + FEAT (classification) + OML's meta-training x 2 kinds; 6 online
    # learners x 2 kinds.
    assert (len(META), len(ONLINE), len(META_ONE), len(ONLINE_ONE)) == (23, 12, 13, 6)
    assert ("maml++", "regression") in META_ONE and ("maml++", "classification") in META


def _case_id(case):
    return f"{case[0]}-{case[1]}"


@pytest.fixture(params=META, ids=_case_id)
def meta(request):
    name, kind = request.param
    return name, _build(name, kind), TASKS[kind]


@pytest.fixture(params=META_ONE, ids=_case_id)
def meta_one(request):
    name, kind = request.param
    return name, _build(name, kind), TASKS[kind]


@pytest.fixture(params=ONLINE, ids=_case_id)
def online(request):
    name, kind = request.param
    return _build(name, kind), kind


@pytest.fixture(params=ONLINE_ONE, ids=_case_id)
def online_one(request):
    name, kind = request.param
    return _build(name, kind), kind


def _frozen(learner):
    first = dataclasses.fields(learner)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(learner, first, None)


# ------------------------------------------------------------------ meta-learners


def test_meta_learner_conforms_and_is_frozen(meta):
    name, learner, _ = meta
    assert isinstance(learner, metajax.MetaObjective)
    assert isinstance(learner, metajax.Learner) == (name != "oml")
    _frozen(learner)


def test_shapes_and_finite_loss(meta):
    name, learner, task = meta
    episode = one_task(task)
    params = learner.init(jax.random.key(0), episode)
    loss, metrics = learner.loss(params, episode, jax.random.key(1))
    assert loss.shape == () and np.isfinite(loss)
    assert metrics and all(np.ndim(v) == 0 and np.isfinite(v) for v in metrics.values())
    if name == "oml":
        return
    adapted = learner.adapt(params, episode.support, jax.random.key(2), num_steps=2)
    outputs = learner.predict(adapted, episode.query_x)
    expected = episode.query_y.shape if task.kind == "regression" else (episode.query_y.shape[0], WAYS)
    assert outputs.shape == expected
    steps = 3 if registry.entry(name).family == "gradient" else 1  # metric and attention: no inner steps
    evaluated = learner.evaluate(params, episode, jax.random.key(3), 2)
    assert evaluated and all(v.shape == (steps,) and np.all(np.isfinite(v)) for v in evaluated.values())


def test_batch_gradient_is_the_mean_of_per_task_gradients(meta_one):
    _, learner, task = meta_one
    episodes = task.sample(jax.random.key(0), 3)
    keys = jax.random.split(jax.random.key(1), 3)
    params = learner.init(jax.random.key(2), one_task(task))
    # The reference: one task at a time, no batching, averaged on the host.
    one = jax.jit(jax.value_and_grad(lambda p, e, k: learner.loss(p, e, k)[0]))
    per_task = [one(params, jax.tree.map(lambda a, i=i: a[i], episodes), keys[i]) for i in range(3)]
    mean = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *[g for _, g in per_task])
    for task_batching in ("vmap", "map"):
        (loss, _), grads = jax.jit(lambda p, b=task_batching: batch_value_and_grad(learner, p, episodes, keys, b))(
            params
        )
        np.testing.assert_allclose(loss, np.mean([v for v, _ in per_task]), rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(grads, mean, rtol=2e-4, atol=1e-6)


def test_training_is_reproducible_keeps_dtypes_and_does_not_retrace(meta_one):
    _, learner, task = meta_one
    counting = CountingLearner(learner)
    run = dict(num_steps=4, meta_batch=2, steps_per_call=2, log_every=2, progress=False)
    first, history = metajax.train(counting, task, OPTIMIZER, key=jax.random.key(7), **run)
    traced = counting.traces
    assert traced > 0 and len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    # Continuing a run, and a second run: the same compiled program, the same numbers for the same seed.
    more, _ = metajax.train(
        counting, task, OPTIMIZER, key=jax.random.key(7), state=jax.tree.map(jnp.copy, first), **dict(run, num_steps=6)
    )
    again, history_again = metajax.train(counting, task, OPTIMIZER, key=jax.random.key(7), **run)
    assert counting.traces == traced and int(more.step) == 6
    chex.assert_trees_all_equal(first.params, again.params)
    assert [h["loss"] for h in history] == [h["loss"] for h in history_again]
    initial = learner.init(jax.random.key(0), one_task(task))
    assert jax.tree.map(lambda a: a.dtype, first.params) == jax.tree.map(lambda a: a.dtype, initial)


# ------------------------------------------------------------------ online learners


def _stream_batch(kind: str, key, batch: int = 4) -> metajax.StreamBatch:
    kx, ky = jax.random.split(key)
    if kind == "regression":
        x = jax.random.uniform(kx, (batch, 1), minval=-5.0, maxval=5.0)
        y = jnp.sin(x)
    else:
        x = jax.random.normal(kx, (batch, 16))
        y = jax.random.randint(ky, (batch,), 0, WAYS)
    return metajax.StreamBatch(x, y, jnp.int32(0), jnp.bool_(True))


def test_online_learner_conforms_and_is_frozen(online):
    learner, _ = online
    assert isinstance(learner, metajax.OnlineLearner)
    _frozen(learner)


def test_online_update_shapes_finite_metrics_and_dtypes(online):
    learner, kind = online
    batch = _stream_batch(kind, jax.random.key(0))
    state = learner.init_state(jax.random.key(1), batch.x, batch.y)
    new, metrics = jax.jit(learner.update)(state, batch, jax.random.key(2))
    assert "loss" in metrics and all(np.ndim(v) == 0 and np.isfinite(v) for v in metrics.values())
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
    expected = batch.y.shape if kind == "regression" else (batch.y.shape[0], WAYS)
    assert learner.predict(new, batch.x).shape == expected


def test_online_update_does_not_retrace_and_is_deterministic(online_one):
    learner, kind = online_one
    traces = []

    def update(state, batch, key):
        traces.append(None)
        return learner.update(state, batch, key)

    step = jax.jit(update)
    first = _stream_batch(kind, jax.random.key(0))

    def stream(key):
        state = learner.init_state(jax.random.key(1), first.x, first.y)
        for i, k in enumerate(jax.random.split(key, 3)):
            batch = _stream_batch(kind, k).replace(switched=jnp.bool_(i == 0))
            state, metrics = step(state, batch, k)
        return state, metrics

    (s1, m1), (s2, m2) = stream(jax.random.key(5)), stream(jax.random.key(5))
    assert len(traces) == 1
    chex.assert_trees_all_equal((s1, m1), (s2, m2))


# ------------------------------------------------------------------ configuration errors

_BAD_CONFIGURATIONS = [
    (dict(inner_steps=0), ValueError, "inner_steps must be a positive integer, got 0"),
    (dict(inner_lr=-0.1), ValueError, "inner_lr must be a positive number, got -0.1"),
    (dict(meta_gradient="second"), TypeError, "meta_gradient must be .*; got 'second'"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "message"),
    [(cls, *bad) for cls in (metajax.MAML, metajax.MetaSGD) for bad in _BAD_CONFIGURATIONS]
    + [(metajax.Reptile, *bad) for bad in _BAD_CONFIGURATIONS[:2]],  # Reptile takes no meta_gradient
)
def test_bad_learner_configuration_is_named(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(models.MLP(hidden=(4,), out=1), **kwargs)


def test_registry_refuses_unknown_names_kinds_and_options():
    with pytest.raises(KeyError, match="no learner named 'mamlx'; registered: .*maml"):
        registry.build("mamlx", _spec("regression"))
    with pytest.raises(ValueError, match="learner 'protonet' needs a classification task, got kind='regression'"):
        registry.build("protonet", _spec("regression"))
    with pytest.raises(ValueError, match=r"unknown learner options \['proxx'\]"):
        registry.build("imaml", _spec("regression"), proxx=1.0)
    assert registry.build("imaml", _spec("regression"), prox=3.0, capacity=5).meta_gradient.prox == 3.0
