"""The Brax half-cheetah tasks: rewards from the torso's motion computed here, clipping, tasks, a short meta-RL run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl
from metajax.app import cli

pytest.importorskip("brax")

ACTION = jnp.array([0.4, -0.3, 0.8, 1.7, -2.5, 0.1])  # the last but two outside [-1, 1]
CLIPPED = jnp.clip(ACTION, -1.0, 1.0)


def _torso_velocity(before, after, dt: float) -> float:
    """The torso's forward displacement over one step, divided by the step's duration."""
    return float((after.pipeline_state.x.pos[0, 0] - before.pipeline_state.x.pos[0, 0]) / dt)


@pytest.fixture(scope="module")
def moved():
    """Three steps of the velocity task's cheetah from rest: the states before and after each, and rewards."""
    env = rl.HalfCheetahVel(horizon=3)
    goal = jnp.array([1.3])
    step = jax.jit(env.step)
    state, obs = env.reset(goal)
    assert obs.shape == (17,) and np.allclose(obs[8:], 0.0)  # at rest: joint velocities zero
    states, rewards = [state], []
    for _ in range(3):
        state, obs, reward = step(state, ACTION, goal)
        states.append(state)
        rewards.append(float(reward))
    return env, goal, states, rewards


def test_the_velocity_reward_is_minus_the_distance_to_the_goal_speed_minus_the_control_cost(moved):
    env, goal, states, rewards = moved
    from metajax.rl.locomotion import _brax_cheetah

    dt = float(_brax_cheetah(env.backend).dt)
    cost = 0.05 * float(jnp.sum(CLIPPED**2))
    for before, after, reward in zip(states[:-1], states[1:], rewards, strict=True):
        v = _torso_velocity(before, after, dt)
        np.testing.assert_allclose(reward, -abs(v - float(goal[0])) - cost, rtol=1e-5, atol=1e-5)
    assert any(abs(_torso_velocity(b, a, dt)) > 1e-3 for b, a in zip(states[:-1], states[1:], strict=True))  # it moved


def test_the_direction_reward_signs_the_forward_velocity_and_actions_are_clipped(moved):
    env, _, states, _ = moved
    backward = rl.HalfCheetahDir(horizon=3)
    state, _ = backward.reset(jnp.array([-1.0]))
    state, _, reward = jax.jit(backward.step)(state, ACTION, jnp.array([-1.0]))
    from metajax.rl.locomotion import _brax_cheetah

    v = _torso_velocity(states[0], states[1], float(_brax_cheetah(env.backend).dt))
    np.testing.assert_allclose(reward, -v - 0.05 * float(jnp.sum(CLIPPED**2)), rtol=1e-5, atol=1e-5)
    same, _, _ = jax.jit(backward.step)(backward.reset(jnp.array([-1.0]))[0], CLIPPED, jnp.array([-1.0]))
    np.testing.assert_allclose(same.obs, state.obs, rtol=1e-6)  # the action acted clipped


def test_tasks_are_the_papers_distributions():
    velocities = np.asarray(rl.HalfCheetahVel().sample_tasks(jax.random.key(0), 10000))
    assert velocities.shape == (10000, 1) and velocities.min() >= 0 and velocities.max() <= 2
    np.testing.assert_allclose(velocities.mean(), 1.0, atol=0.03)
    directions = np.asarray(rl.HalfCheetahDir().sample_tasks(jax.random.key(0), 10000))
    assert set(np.unique(directions).tolist()) == {-1.0, 1.0} and abs(directions.mean()) < 0.05
    with pytest.raises(ValueError, match="backend must be one of"):
        rl.HalfCheetahVel(backend="bullet")


def test_metajax_train_on_the_cheetah_reports_the_return_per_adaptation_step(tmp_path):
    # The random baseline: no meta-training to compile, the same rollouts and inner step at test time.
    argv = ["train", "--task", "cheetah-dir", "--algo", "random", "--horizon", "4", "--episodes", "2",
            "--eval-steps", "1", "--eval-tasks", "2", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval"]["num_steps"] == 1 and len(metrics["eval"]["return"]["mean"]) == 2
    assert all(np.isfinite(metrics["eval"]["return"]["mean"]))


def test_the_cheetahs_default_to_mamls_locomotion_protocol():
    args = cli.build_parser().parse_args(["train", "--task", "cheetah-vel", "--algo", "maml-rl", "--out", "x"])
    cli._check_args(args)
    assert (args.meta_batch, args.horizon, args.episodes, args.inner_lr, args.eval_steps) == (40, 200, 20, 0.1, 3)
