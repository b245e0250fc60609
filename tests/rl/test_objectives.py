"""Returns, the linear feature baseline and advantages against NumPy; the policy gradient against its closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import QuadraticPoint, as_theta, expected_return, linear_policy_params
from metajax import rl
from metajax.rl import objectives


def test_discounted_returns_match_a_loop():
    rewards = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    expected = np.zeros_like(rewards)
    for e in range(3):
        running = 0.0
        for t in reversed(range(7)):
            running = rewards[e, t] + 0.9 * running
            expected[e, t] = running
    np.testing.assert_allclose(objectives.discounted_returns(jnp.asarray(rewards), 0.9), expected, rtol=1e-5)


def test_linear_baseline_is_the_ridge_fit_on_rllabs_features():
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(4, 6, 2)).astype(np.float32) * 3
    returns = rng.normal(size=(4, 6)).astype(np.float32)
    t = np.broadcast_to(np.arange(6)[None, :, None] / 100.0, (4, 6, 1))
    o = np.clip(obs, -10, 10)
    features = np.concatenate([o, o**2, t, t**2, t**3, np.ones_like(t)], -1).reshape(-1, 8).astype(np.float64)
    coef = np.linalg.solve(features.T @ features + 1e-5 * np.eye(8), features.T @ returns.reshape(-1))
    values = objectives.linear_baseline(jnp.asarray(obs), jnp.asarray(returns), 1e-5)
    np.testing.assert_allclose(values, (features @ coef).reshape(4, 6), rtol=1e-3, atol=1e-3)
    adv = objectives.advantages(jnp.asarray(obs), jnp.asarray(returns), 0.99)
    np.testing.assert_allclose([adv.mean(), adv.std()], [0.0, 1.0], atol=1e-5)


def test_estimators_have_one_gradient_and_differ_in_their_hessians():
    log_probs, adv = jnp.array([[0.1, -0.3, 0.2]]), jnp.array([[1.0, -2.0, 0.5]])
    grads = [jax.grad(objectives.surrogate)(log_probs, adv, e) for e in objectives.ESTIMATORS]
    for g in grads:
        np.testing.assert_allclose(g, adv / 3, rtol=1e-6)
    # Second derivatives in the log-probabilities: vpg none; lvc A_t on step t alone; DiCE also couples
    # step t with every earlier one (A_max(i, j)), the cross terms of the score function.
    hessians = {e: jax.hessian(objectives.surrogate)(log_probs, adv, e)[0, :, 0, :] for e in objectives.ESTIMATORS}
    np.testing.assert_allclose(hessians["vpg"], np.zeros((3, 3)), atol=1e-7)
    np.testing.assert_allclose(hessians["lvc"], np.diag([1.0, -2.0, 0.5]) / 3, rtol=1e-6)
    a = np.array([1.0, -2.0, 0.5]) / 3
    np.testing.assert_allclose(hessians["dice"], a[np.maximum.outer(np.arange(3), np.arange(3))], rtol=1e-5)
    with pytest.raises(ValueError, match="estimator must be one of 'vpg', 'lvc', 'dice'; got 'ppo'"):
        objectives.surrogate(log_probs, adv, "ppo")


def test_policy_gradient_equals_the_analytic_gradient_on_a_gaussian_bandit():
    goal, theta = 0.7, jnp.array([0.0, 0.1, -0.5])
    learner = rl.MAMLRL(
        QuadraticPoint(), rl.GaussianMLPPolicy(hidden=()), episodes=200_000, discount=1.0, normalize_advantages=False
    )
    objective = jax.jit(lambda p: learner.inner_objective(p, jnp.array([goal]), jax.random.key(0)))
    estimate = -as_theta(jax.grad(objective)(linear_policy_params(theta)))
    exact = np.asarray(jax.grad(expected_return)(theta, goal, 1))  # [d/dw = 0, -2 (b - g), -2 sigma^2]
    np.testing.assert_allclose(estimate, exact, atol=0.01)
