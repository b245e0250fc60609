"""MAML-RL: the second-order meta-gradient against the exact one, compilation, determinism, bad settings."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import QuadraticPoint, as_theta, expected_return, linear_policy_params
from metajax import rl
from metajax.training import init_state, make_train_step

GOAL, ALPHA, THETA = 0.7, 0.3, jnp.array([0.2, 0.1, -0.5])


def exact_meta_gradients(horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``(second order, first order)`` meta-gradients of the expected post-adaptation return, from the closed form.

    The surrogates average over the ``horizon`` steps (rllab's convention), so an inner step
    moves ``theta`` by ``ALPHA / horizon`` times the gradient and the meta-gradient is scaled
    by ``1 / horizon``.
    """

    def value(theta):
        return expected_return(theta, GOAL, horizon)

    def adapt(theta):
        return theta + ALPHA / horizon * jax.grad(value)(theta)

    second = jax.grad(lambda theta: value(adapt(theta)))(THETA) / horizon
    first = jax.grad(value)(adapt(THETA)) / horizon
    return np.asarray(second), np.asarray(first)


def estimated_meta_gradient(horizon: int, estimator: str, meta_gradient) -> np.ndarray:
    """The gradient of minus ``MAMLRL.loss`` (100,000 episodes) on :class:`QuadraticPoint` at ``THETA``."""
    env = QuadraticPoint(horizon)
    learner = rl.MAMLRL(
        env,
        rl.GaussianMLPPolicy(hidden=()),
        episodes=100_000,
        inner_lr=ALPHA,
        estimator=estimator,
        meta_gradient=meta_gradient,
        discount=1.0,
        normalize_advantages=False,
    )
    episode = metajax.Episode(jnp.full((1, 1), GOAL), jnp.zeros((1, 1)), jnp.full((1, 1), GOAL), jnp.zeros((1, 1)))
    grad = jax.jit(jax.grad(lambda p: learner.loss(p, episode, jax.random.key(0))[0]))
    return -as_theta(grad(linear_policy_params(THETA)))


@pytest.mark.parametrize("horizon", [1, 2])
def test_second_order_meta_gradient_is_exact_with_dice(horizon):
    second, first = exact_meta_gradients(horizon)
    assert np.abs(second - first).max() > 0.2  # the second-order terms matter here
    np.testing.assert_allclose(estimated_meta_gradient(horizon, "dice", metajax.SecondOrder()), second, atol=0.05)
    np.testing.assert_allclose(estimated_meta_gradient(horizon, "dice", metajax.FirstOrder()), first, atol=0.05)
    # Differentiating REINFORCE as written (vpg) misses the score-function terms of the Hessian.
    assert np.abs(estimated_meta_gradient(horizon, "vpg", metajax.SecondOrder()) - second).max() > 0.5


def test_lvc_is_exact_on_one_step_and_misses_the_cross_step_terms_on_two():
    np.testing.assert_allclose(
        estimated_meta_gradient(1, "lvc", metajax.SecondOrder()), exact_meta_gradients(1)[0], atol=0.05
    )
    assert np.abs(estimated_meta_gradient(2, "lvc", metajax.SecondOrder()) - exact_meta_gradients(2)[0]).max() > 0.5


class CountingEnv:
    """A :class:`~metajax.rl.Navigation2D` that counts how often its ``step`` is traced."""

    def __init__(self, env):
        self.env, self.traces = env, 0
        self.horizon, self.observation_size = env.horizon, env.observation_size
        self.action_size, self.task_size = env.action_size, env.task_size

    def sample_tasks(self, key, num_tasks):
        return self.env.sample_tasks(key, num_tasks)

    def reset(self, task):
        return self.env.reset(task)

    def step(self, state, action, task):
        self.traces += 1
        return self.env.step(state, action, task)


def tiny(env, **options):
    return rl.MAMLRL(env, rl.GaussianMLPPolicy(hidden=(8,)), episodes=3, **options)


def test_meta_iterations_do_not_recompile():
    env = CountingEnv(rl.Navigation2D(horizon=4))
    learner, task, optimizer = tiny(env), rl.EnvTasks(env), optax.adam(1e-3)
    step = make_train_step(learner, task, optimizer, meta_batch=2)
    state, _ = step(init_state(learner, task, optimizer, jax.random.key(0)))
    traced = env.traces
    assert traced > 0
    for _ in range(3):
        state, metrics = step(state)
    assert env.traces == traced and step.jitted._cache_size() == 1
    assert int(state.step) == 4 and np.isfinite(metrics["loss"]).all()


def test_the_same_seed_gives_the_same_run():
    env = rl.Navigation2D(horizon=4)
    learner, task, optimizer = tiny(env), rl.EnvTasks(env), optax.adam(1e-2)  # one program for the three runs
    run = lambda seed: metajax.train(
        learner, task, optimizer, key=jax.random.key(seed), num_steps=3, meta_batch=2, progress=False
    )[0]
    first, again, other = run(0), run(0), run(1)
    chex.assert_trees_all_equal(first.params, again.params)
    assert not np.allclose(first.params["log_std"], other.params["log_std"])
    result = metajax.evaluate(learner, first.params, task, key=jax.random.key(2), num_tasks=3, num_steps=2)
    assert len(result["return"]["mean"]) == 3 and len(result["return"]["ci95"]) == 3


def test_pretrained_learner_takes_no_inner_step_and_adapts_at_test_time():
    env = rl.Navigation2D(horizon=4)
    learner = rl.registry.build("pretrained", env, policy=rl.GaussianMLPPolicy(hidden=(8,)), episodes=3)
    episode = jax.tree.map(lambda a: a[0], rl.EnvTasks(env).sample(jax.random.key(0), 1))
    params = learner.init(jax.random.key(1), episode)
    chex.assert_trees_all_equal(learner.adapt(params, episode.support, jax.random.key(2)), params)
    adapted = learner.adapt(params, episode.support, jax.random.key(2), num_steps=1)
    assert not np.allclose(adapted["log_std"], params["log_std"])
    assert learner.predict(adapted, jnp.zeros((5, 2))).shape == (5, 2)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"estimator": "trpo"}, ValueError, "estimator must be one of 'vpg', 'lvc', 'dice'; got 'trpo'"),
        ({"meta_gradient": metajax.Implicit()}, TypeError, r"meta_gradient must be metajax.SecondOrder\(\)"),
        ({"discount": 1.5}, ValueError, r"discount must be in \(0, 1\], got 1.5"),
        ({"inner_steps": -1}, ValueError, "inner_steps must be a non-negative integer, got -1"),
    ],
)
def test_bad_learner_settings_are_named(options, error, message):
    with pytest.raises(error, match=message):
        tiny(rl.Navigation2D(), **options)
    known = "maml-rl, maml-trpo, promp, pretrained, random"
    with pytest.raises(KeyError, match=f"no RL learner named 'rl2'; known: {known}"):
        rl.registry.build("rl2", rl.Navigation2D())
