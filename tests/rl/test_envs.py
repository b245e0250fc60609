"""2D navigation against hand computations; rollouts against a Python loop; the task distribution."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl


class LinearPolicy:
    """A deterministic 'policy' ``action = W obs + b`` (tests only), so a Python loop can replay it."""

    def sample(self, params, obs, key):
        del key
        return params["W"] @ obs + params["b"]


def test_step_clips_the_action_and_rewards_minus_the_distance_to_the_goal():
    env = rl.Navigation2D()
    goal = jnp.array([0.3, -0.2])
    state, obs = env.reset(goal)
    assert obs.tolist() == [0.0, 0.0]
    state, obs, reward = env.step(state, jnp.array([0.05, 0.5]), goal)  # y clipped to 0.1
    np.testing.assert_allclose(obs, [0.05, 0.1], rtol=1e-6)
    np.testing.assert_allclose(reward, -math.sqrt(0.25**2 + 0.3**2), rtol=1e-6)
    state, obs, reward = env.step(state, jnp.array([-1.0, 0.02]), goal)  # x clipped to -0.1
    np.testing.assert_allclose(obs, [-0.05, 0.12], rtol=1e-6)
    np.testing.assert_allclose(reward, -math.sqrt(0.35**2 + 0.32**2), rtol=1e-6)


def test_goals_are_uniform_in_the_square_and_drawn_from_the_key():
    env = rl.Navigation2D()
    goals = np.asarray(env.sample_tasks(jax.random.key(0), 20000))
    assert goals.shape == (20000, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    np.testing.assert_allclose(goals.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(goals.var(0), 1 / 12, rtol=0.03)  # the variance of U[-0.5, 0.5]
    np.testing.assert_array_equal(goals, env.sample_tasks(jax.random.key(0), 20000))
    assert not np.array_equal(goals, env.sample_tasks(jax.random.key(1), 20000))


def test_rollout_matches_a_python_loop_and_vmaps_over_tasks():
    env = rl.Navigation2D(horizon=4)
    params = {"W": np.array([[0.5, -1.0], [2.0, 0.3]], np.float32), "b": np.array([0.15, -0.04], np.float32)}
    goals = jnp.array([[0.3, -0.2], [-0.4, 0.1]])
    batch = jax.vmap(lambda g: rl.rollout(env, LinearPolicy(), params, g, jax.random.key(0), 2))(goals)
    assert batch.observations.shape == (2, 2, 4, 2) and batch.rewards.shape == (2, 2, 4)
    for i, goal in enumerate(np.asarray(goals)):
        position, observations, actions, rewards = np.zeros(2), [], [], []
        for _ in range(4):
            observations.append(position.copy())
            actions.append(params["W"] @ position + params["b"])
            position = position + np.clip(actions[-1], -0.1, 0.1)
            rewards.append(-np.linalg.norm(position - goal))
        for e in range(2):  # a deterministic policy plays the same episode twice
            np.testing.assert_allclose(batch.observations[i, e], observations, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(batch.actions[i, e], actions, rtol=1e-5, atol=1e-7)  # before clipping
            np.testing.assert_allclose(batch.rewards[i, e], rewards, rtol=1e-5)
        np.testing.assert_allclose(batch.returns[i], np.full(2, sum(rewards)), rtol=1e-5)


def test_gaussian_policy_samples_and_log_density():
    policy = rl.GaussianMLPPolicy(hidden=(4,), init_log_std=math.log(0.5))
    params = policy.init(jax.random.key(0), observation_size=2, action_size=2)
    obs = jnp.array([0.1, -0.2])
    samples = jax.vmap(lambda k: policy.sample(params, obs, k))(jax.random.split(jax.random.key(1), 40000))
    mean = policy.mean(params, obs[None])[0]
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(samples.std(0), 0.5, rtol=0.02)
    a = jnp.array([[0.3, 0.0]])
    expected = sum(-0.5 * ((a[0, i] - mean[i]) / 0.5) ** 2 - math.log(0.5 * math.sqrt(2 * math.pi)) for i in range(2))
    np.testing.assert_allclose(policy.log_prob(params, obs[None], a), [expected], rtol=1e-5)


def test_env_tasks_are_episodes_holding_the_task():
    env = rl.Navigation2D()
    episodes = rl.EnvTasks(env).sample(jax.random.key(3), 5)
    np.testing.assert_array_equal(episodes.support_x[:, 0], env.sample_tasks(jax.random.key(3), 5))
    np.testing.assert_array_equal(episodes.query_x, episodes.support_x)
    assert episodes.support_y.shape == (5, 1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: rl.Navigation2D(horizon=0), "horizon must be a positive integer, got 0"),
        (lambda: rl.Navigation2D(max_action=-0.1), "max_action must be a positive number, got -0.1"),
        (
            lambda: rl.rollout(rl.Navigation2D(), rl.GaussianMLPPolicy(), {}, jnp.zeros(2), jax.random.key(0), 0),
            "episodes must be a positive integer, got 0",
        ),
    ],
)
def test_bad_environment_settings_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()
