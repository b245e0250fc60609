"""One contract suite over every learner: shapes, finite loss, no retrace, determinism."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

import metajax
from helpers import one_task, regression_learners
from metajax import models, tasks

LEARNERS = regression_learners()
TASK = tasks.Sinusoid(shots=5, queries=7)


class CountingLearner:
    """Delegates to a learner and counts how often ``loss`` is traced."""

    def __init__(self, learner):
        self.learner, self.traces = learner, 0

    def init(self, key, episode):
        return self.learner.init(key, episode)

    def loss(self, params, episode, key):
        self.traces += 1
        return self.learner.loss(params, episode, key)


@pytest.fixture(params=sorted(LEARNERS))
def learner(request):
    return LEARNERS[request.param]


def test_learner_is_a_frozen_configuration(learner):
    with pytest.raises(dataclasses.FrozenInstanceError):
        learner.inner_lr = 1.0


def test_shapes_and_finite_loss(learner):
    episode = one_task(TASK)
    params = learner.init(jax.random.key(0), episode)
    loss, metrics = learner.loss(params, episode, jax.random.key(1))
    assert loss.shape == () and np.isfinite(loss)
    assert all(np.ndim(v) == 0 and np.isfinite(v) for v in metrics.values())
    adapted = learner.adapt(params, episode.support, jax.random.key(2))
    assert learner.predict(adapted, episode.query_x).shape == episode.query_y.shape
    evaluated = learner.evaluate(params, episode, jax.random.key(3), 4)
    assert {k: v.shape for k, v in evaluated.items()} == {"mse": (5,)}


def test_loss_is_jittable_and_vmappable(learner):
    episodes = TASK.sample(jax.random.key(0), 3)
    params = learner.init(jax.random.key(1), one_task(TASK))
    fn = jax.jit(jax.vmap(learner.loss, in_axes=(None, 0, 0)))
    losses, _ = fn(params, episodes, jax.random.split(jax.random.key(2), 3))
    assert losses.shape == (3,) and np.all(np.isfinite(losses))


def test_meta_step_does_not_retrace(learner):
    counting = CountingLearner(learner)
    optimizer = optax.adam(1e-3)
    state = metajax.init_state(counting, TASK, optimizer, jax.random.key(0))
    step = metajax.make_train_step(counting, TASK, optimizer, meta_batch=4, steps_per_call=2)
    state, _ = step(state)
    traced = counting.traces
    for _ in range(3):
        state, metrics = step(state)
    assert counting.traces == traced
    assert int(state.step) == 8 and metrics["loss"].shape == (2,)


def test_same_seed_same_result(learner):
    def run():
        state, history = metajax.train(
            learner,
            TASK,
            optax.adam(1e-3),
            key=jax.random.key(7),
            num_steps=6,
            meta_batch=4,
            steps_per_call=3,
            log_every=3,
            progress=False,
        )
        return state.params, [h["loss"] for h in history]

    (p1, h1), (p2, h2) = run(), run()
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert h1 == h2


_BAD_CONFIGURATIONS = [
    (dict(inner_steps=0), ValueError, "inner_steps must be a positive integer, got 0"),
    (dict(inner_lr=-0.1), ValueError, "inner_lr must be a positive number, got -0.1"),
    (dict(meta_gradient="second"), TypeError, "meta_gradient must be one of .*; got 'second'"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "message"),
    [(cls, *bad) for cls in (metajax.MAML, metajax.MetaSGD) for bad in _BAD_CONFIGURATIONS]
    + [(metajax.Reptile, *bad) for bad in _BAD_CONFIGURATIONS[:2]],  # Reptile takes no meta_gradient
)
def test_bad_learner_configuration_is_named(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(models.MLP(hidden=(4,), out=1), **kwargs)
