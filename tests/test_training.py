"""The trainer: learning happens, dispatch grouping is exact, errors name the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import models, tasks


def _maml():
    return metajax.MAML(models.MLP(hidden=(32, 32), out=1), inner_lr=0.01)


def test_training_lowers_the_sinusoid_loss():
    state, history = metajax.train(
        _maml(),
        tasks.Sinusoid(shots=10),
        optax.adam(1e-3),
        key=jax.random.key(0),
        num_steps=600,
        meta_batch=10,
        steps_per_call=50,
        log_every=100,
        progress=False,
    )
    assert int(state.step) == 600 and [h["step"] for h in history] == [100, 200, 300, 400, 500, 600]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert all(h["tasks_per_s"] > 0 for h in history)


def test_steps_per_call_does_not_change_the_result():
    common = dict(key=jax.random.key(3), num_steps=6, meta_batch=5, log_every=6, progress=False)
    s1, _ = metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), steps_per_call=1, **common)
    s6, _ = metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), steps_per_call=6, **common)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s1.params, s6.params)


def test_continuing_from_a_state_equals_one_run():
    task, opt = tasks.Sinusoid(shots=5), optax.adam(1e-3)
    common = dict(key=jax.random.key(4), meta_batch=5, log_every=2, progress=False, steps_per_call=2)
    full, _ = metajax.train(_maml(), task, opt, num_steps=8, **common)
    half, _ = metajax.train(_maml(), task, opt, num_steps=4, **common)
    resumed, _ = metajax.train(_maml(), task, opt, num_steps=8, state=half, **common)
    jax.tree.map(np.testing.assert_array_equal, full.params, resumed.params)


def test_time_budget_stops_early_and_logs_the_last_step():
    common = dict(key=jax.random.key(4), meta_batch=2, log_every=1000, progress=False, steps_per_call=1)
    state, history = metajax.train(
        _maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), num_steps=10**6, max_seconds=1e-9, **common
    )
    assert int(state.step) == 1 and [e["step"] for e in history] == [1]
    with pytest.raises(ValueError, match="max_seconds must be positive or None, got 0"):
        metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), num_steps=2, max_seconds=0, **common)


def test_map_batching_matches_vmap():
    common = dict(key=jax.random.key(5), num_steps=3, meta_batch=4, log_every=3, progress=False)
    sv, _ = metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), task_batching="vmap", **common)
    sm, _ = metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), task_batching="map", **common)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sv.params, sm.params)


def test_non_finite_loss_names_the_step():
    nan_optimizer = optax.scale(float("nan"))  # params become NaN after the first update
    with pytest.raises(FloatingPointError, match="meta-step 2"):
        metajax.train(
            _maml(),
            tasks.Sinusoid(shots=5),
            nan_optimizer,
            key=jax.random.key(0),
            num_steps=4,
            meta_batch=2,
            steps_per_call=4,
            progress=False,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be a positive integer, got 0"),
        ({"meta_batch": -1}, "meta_batch must be a positive integer, got -1"),
        ({"steps_per_call": 0}, "steps_per_call must be a positive integer, got 0"),
        ({"task_batching": "pmap"}, "task_batching must be one of 'vmap', 'map'; got 'pmap'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = dict(key=jax.random.key(0), num_steps=2, meta_batch=2, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), **args)


def test_task_batching_is_resolved_from_what_the_learner_adapts():
    import flax.linen as nn

    from metajax.training import resolve_task_batching

    images = tasks.FewShot(jnp.zeros((6, 3, 8, 8, 1), jnp.uint8), ways=2, shots=1, queries=1)
    conv = models.Conv4(filters=4, pool="max", out=2)
    per_task_conv = "map" if jax.default_backend() == "cpu" else "vmap"
    assert resolve_task_batching(metajax.MAML(conv), images) == per_task_conv  # adapts the conv kernels
    assert resolve_task_batching(metajax.MetaSGD(conv), images) == per_task_conv
    assert resolve_task_batching(metajax.ANIL(models.Conv4(filters=4), nn.Dense(2)), images) == "vmap"  # head only
    assert resolve_task_batching(metajax.ProtoNet(models.Conv4(filters=4), ways=2), images) == "vmap"
    assert resolve_task_batching(metajax.MAML(models.MLP()), tasks.Sinusoid()) == "vmap"  # dense weights batch well
    assert resolve_task_batching(metajax.MAML(conv), images, "vmap") == "vmap"  # the user can force one
    with pytest.raises(ValueError, match="task_batching must be one of 'vmap', 'map'; got 'pmap'"):
        resolve_task_batching(metajax.MAML(conv), images, "pmap")
