"""MAML-TRPO: the direction against a dense solve, the accepted step inside the trust region, the CLI run."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metajax import rl
from metajax.algorithms.inner import FirstOrder
from metajax.app import cli

ENV = rl.Navigation2D(horizon=4)


def _setup(**settings):
    learner = rl.MAMLTRPO(ENV, rl.GaussianMLPPolicy(hidden=(4,)), episodes=3, **settings)
    episodes = rl.EnvTasks(ENV).sample(jax.random.key(0), 2)
    params = learner.init(jax.random.key(1), jax.tree.map(lambda a: a[0], episodes))
    keys = jax.random.split(jax.random.key(2), 2)
    pre, post = jax.vmap(learner.sampler.sample, in_axes=(None, 0, 0))(params, episodes.support_x[:, 0], keys)
    return learner, episodes, keys, params, pre, post


def test_the_direction_solves_the_damped_kl_hessian_system_as_a_dense_solve_does():
    learner, _, _, params, pre, post = _setup(cg_steps=200, damping=1e-2)
    batch = jax.vmap(learner.surrogate_and_kl, in_axes=(None, 0, 0))
    objective = lambda p: batch(p, pre, post)[0].mean()
    kl = lambda p: batch(p, pre, post)[1].mean()
    step, _ = learner.direction(objective, kl, params)
    flat, unravel = ravel_pytree(params)
    hessian = np.asarray(jax.hessian(lambda f: kl(unravel(f)))(flat), np.float64)
    grad = np.asarray(jax.grad(lambda f: objective(unravel(f)))(flat), np.float64)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda f: kl(unravel(f)))(flat)), 0.0, atol=1e-6)  # a minimum
    expected = np.linalg.solve(hessian + 1e-2 * np.eye(flat.size), grad)
    np.testing.assert_allclose(ravel_pytree(step)[0], expected, rtol=2e-3, atol=1e-5 * np.abs(expected).max())


def _kl_by_hand(learner, params, pre, post) -> float:
    """Mean KL(sampling Gaussian || Gaussian of the policy adapted from params on the stored episodes), in NumPy."""
    values = []
    for task in range(2):
        pre_t, post_t = jax.tree.map(lambda a, t=task: a[t], (pre, post))
        adapted = learner.sampler.adapt_on_samples(params, pre_t, FirstOrder())[0]
        mean_q = np.asarray(learner.policy.mean(adapted, post_t.trajectories.observations), np.float64)
        mean_p, log_p = np.asarray(post_t.means, np.float64), np.asarray(post_t.log_std, np.float64)
        log_q = np.asarray(adapted["log_std"], np.float64)
        kl = log_q - log_p + (np.exp(2 * log_p) + (mean_p - mean_q) ** 2) / (2 * np.exp(2 * log_q)) - 0.5
        values.append(kl.sum(-1).mean())
    return float(np.mean(values))


@pytest.mark.parametrize("max_kl", [0.01, 1e-4])
def test_the_accepted_step_stays_inside_the_trust_region_and_raises_the_surrogate(max_kl):
    learner, episodes, keys, params, pre, post = _setup(max_kl=max_kl)
    new, state, loss, metrics = learner.meta_update(params, "unused", episodes, keys, None)
    assert state == "unused" and np.isfinite(loss)
    kl = _kl_by_hand(learner, new, pre, post)
    assert metrics["step_fraction"] > 0  # a small problem: some step along the direction helps
    assert kl <= max_kl * (1 + 1e-4) and kl > 0.05 * max_kl  # inside the region, not a vanishing step
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-3)
    batch = jax.vmap(learner.surrogate_and_kl, in_axes=(None, 0, 0))
    gain = batch(new, pre, post)[0].mean() - batch(params, pre, post)[0].mean()
    np.testing.assert_allclose(metrics["surrogate_gain"], gain, rtol=1e-4)
    assert gain > 0


class FlatReward(rl.Navigation2D):
    """Navigation whose every reward is 0 (tests only): every advantage is 0, no step can raise the surrogate."""

    def step(self, state, action, task):
        state, obs, reward = super().step(state, action, task)
        return state, obs, 0.0 * reward


def test_a_batch_no_step_can_improve_leaves_the_parameters():
    env = FlatReward(horizon=4)
    learner = rl.MAMLTRPO(env, rl.GaussianMLPPolicy(hidden=(4,)), episodes=3, backtracks=3)
    episodes = rl.EnvTasks(env).sample(jax.random.key(0), 2)
    params = learner.init(jax.random.key(1), jax.tree.map(lambda a: a[0], episodes))
    new, _, _, metrics = learner.meta_update(params, None, episodes, jax.random.split(jax.random.key(2), 2), None)
    assert metrics["step_fraction"] == 0 and metrics["kl"] == 0 and metrics["surrogate_gain"] == 0
    jax.tree.map(np.testing.assert_array_equal, new, params)


def test_metajax_train_maml_trpo_on_nav2d(tmp_path):
    argv = ["train", "--task", "nav2d", "--algo", "maml-trpo", "--horizon", "5", "--episodes", "2",
            "--meta-batch", "2", "--steps", "2", "--eval-tasks", "2", "--log-every", "1",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["max_kl"] == 0.01 and len(metrics["eval"]["return"]["mean"]) == 4
    assert {"kl", "step_fraction", "surrogate_gain"} <= set(metrics["train"]["curve"][-1])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "maml-rl", "--max-kl", "0.01"], "--max-kl applies to --algo maml-trpo only, not --algo maml-rl."),
        (["--algo", "maml-trpo", "--task-batching", "map"], "--task-batching map does not apply to --algo maml-trpo"),
        (["--algo", "maml-trpo", "--max-kl", "0"], "--max-kl must be a positive number, the mean KL one meta-step"),
    ],
)
def test_bad_trust_region_flags_are_refused(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["train", "--task", "nav2d", *argv, "--steps", "1", "--out", str(tmp_path), "--no-progress"])
    assert error.value.code == 2 and message in capsys.readouterr().err
