"""The trainer: learning happens, dispatch grouping is exact, errors name the step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import models, tasks


def _maml():
    return metajax.MAML(models.MLP(hidden=(32, 32), out=1), inner_lr=0.01)


@dataclasses.dataclass(frozen=True)
class _ExpLoss:
    """A learner whose loss is ``exp(w)`` of one scalar parameter ``w``, starting at ``w0``."""

    w0: float = 0.0

    def init(self, key, episode):
        return {"w": jnp.full((), self.w0, jnp.float32)}

    def loss(self, params, episode, key):
        return jnp.exp(params["w"]), {}

    def adapted_params(self, params):
        return params


_ASCENT = optax.chain(optax.scale_by_sign(), optax.scale(1.0))  # w += 1 per step: the loss grows e-fold


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
    # w += 1 from 87: exp(87) and exp(88) fit in float32, exp(89) = inf, at meta-step 3; the state stays finite.
    assert np.exp(88.0) < np.finfo(np.float32).max < np.exp(89.0)
    common = dict(key=jax.random.key(0), num_steps=6, meta_batch=1, steps_per_call=6, progress=False)
    with pytest.raises(metajax.DivergenceError, match=r"loss became non-finite \(inf\) at meta-step 3\.") as caught:
        metajax.train(_ExpLoss(w0=87.0), tasks.Sinusoid(shots=2), _ASCENT, **common)
    assert (caught.value.step, caught.value.rule) == (3, "non-finite loss")
    nan_optimizer = optax.scale(float("nan"))  # params become NaN in the first update
    with pytest.raises(FloatingPointError, match=r"state became non-finite at meta-step 1 \(params\['Dense_0'\]"):
        metajax.train(_maml(), tasks.Sinusoid(shots=5), nan_optimizer, **common | {"meta_batch": 2})


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


def test_finite_blow_up_is_stopped_by_the_median_rule():
    rule = metajax.Divergence(factor=100.0, warmup=2)
    # Independently: step t's loss is exp(t - 1); each is logged (log_every=1); the rule bounds step t by
    # factor x the median of the losses of steps 1 .. t-1 once two are logged.
    losses = [np.exp(t - 1.0) for t in range(1, 40)]
    expected = next(t for t in range(3, 40) if losses[t - 1] > 100.0 * np.median(losses[: t - 1]))
    common = dict(key=jax.random.key(0), num_steps=40, meta_batch=1, log_every=1, progress=False)
    with pytest.raises(metajax.DivergenceError, match=f"loss diverged at meta-step {expected}: ") as caught:
        metajax.train(_ExpLoss(), tasks.Sinusoid(shots=2), _ASCENT, steps_per_call=3, divergence=rule, **common)
    assert caught.value.step == expected and caught.value.loss == pytest.approx(losses[expected - 1], rel=1e-5)
    assert "100 x the median of the losses logged so far" in str(caught.value)
    state, _ = metajax.train(
        _ExpLoss(), tasks.Sinusoid(shots=2), _ASCENT, divergence=None, **common | {"num_steps": 12}
    )
    assert int(state.step) == 12  # the rule disabled
    with pytest.raises(ValueError, match="factor must be above 1"):
        metajax.Divergence(factor=0.5)
    with pytest.raises(TypeError, match="divergence must be a metajax.training.Divergence"):
        metajax.train(_ExpLoss(), tasks.Sinusoid(shots=2), _ASCENT, divergence="big", **common)


def test_non_finite_optimizer_state_is_never_checkpointed(tmp_path):
    from metajax.checkpoint import Checkpointer

    learner, task, optimizer = _ExpLoss(w0=40.0), tasks.Sinusoid(shots=2), optax.adam(-1.0)  # Adam ascent
    # Independently, with optax alone: the first step after which Adam's state holds inf (its second moment
    # overflows while the loss exp(w) is still finite).
    params = learner.init(None, None)
    opt_state = optimizer.init(params)
    expected = 0
    while all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(opt_state)):
        expected += 1
        grads = jax.grad(lambda p: learner.loss(p, None, None)[0])(params)
        assert np.isfinite(float(learner.loss(params, None, None)[0]))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    checkpointer = Checkpointer(tmp_path, every=1)
    with pytest.raises(metajax.DivergenceError, match=f"optimizer state became non-finite at meta-step {expected} "):
        metajax.train(learner, task, optimizer, key=jax.random.key(0), num_steps=100, meta_batch=1,
                      progress=False, checkpointer=checkpointer)  # fmt: skip
    assert checkpointer.latest_step() == expected - 1
    like = metajax.init_state(learner, task, optimizer, jax.random.key(0))
    state, _ = checkpointer.restore(like)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves((state.params, state.opt_state)))


def test_keyboard_interrupt_saves_the_current_state_and_is_re_raised(tmp_path):
    from metajax.checkpoint import Checkpointer

    def interrupt(state, entry):
        if entry["step"] == 6:
            raise KeyboardInterrupt

    checkpointer = Checkpointer(tmp_path, every=100)
    common = dict(key=jax.random.key(1), meta_batch=2, steps_per_call=2, log_every=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), num_steps=50, on_log=interrupt,
                      checkpointer=checkpointer, **common)  # fmt: skip
    assert checkpointer.steps() == [6]
    reference, _ = metajax.train(_maml(), tasks.Sinusoid(shots=5), optax.adam(1e-3), num_steps=6, **common)
    state, _ = checkpointer.restore(reference)
    jax.tree.map(np.testing.assert_array_equal, state.params, reference.params)
