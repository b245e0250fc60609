"""ProMP: its objectives against hand computations, its first outer gradient against MAML-RL's, its settings."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import rl
from metajax.rl import objectives
from metajax.rl.promp import adapt_kl_coeff

# Likelihood ratios 1.5, 0.5, 1.1, 0.7 with clip range 0.2: the first and last are clipped
# (their unclipped term is the larger), the second keeps its smaller unclipped term, the
# third is inside the range.
RATIOS, ADV = np.array([1.5, 0.5, 1.1, 0.7]), np.array([1.0, 1.0, -1.0, -2.0])


def test_clipped_surrogate_is_ppos_on_a_hand_computed_example():
    old = jnp.array([[0.3, -0.2, 0.0, 1.0]])
    log_probs = old + jnp.log(jnp.asarray(RATIOS, jnp.float32))[None]
    adv = jnp.asarray(ADV, jnp.float32)[None]
    value, grad = jax.value_and_grad(objectives.clipped_surrogate)(log_probs, old, adv, 0.2)
    # min(1.5, 1.2), min(0.5, 0.8), min(-1.1, -1.1), min(-1.4, -1.6)
    np.testing.assert_allclose(value, (1.2 + 0.5 - 1.1 - 1.6) / 4, rtol=1e-6)
    # d(r A)/d log pi = r A where the unclipped term is taken, 0 where the clipped one is.
    np.testing.assert_allclose(grad, [[0.0, 0.5 / 4, -1.1 / 4, 0.0]], rtol=1e-5, atol=1e-7)
    # With a ratio of 1 (the first outer step) it is the LVC surrogate, value and gradient.
    lvc = lambda lp: objectives.surrogate(lp, adv, "lvc")
    clipped = lambda lp: objectives.clipped_surrogate(lp, jax.lax.stop_gradient(lp), adv, 0.2)
    np.testing.assert_allclose(jax.grad(clipped)(old), jax.grad(lvc)(old), rtol=1e-6)
    np.testing.assert_allclose(clipped(old), lvc(old), rtol=1e-6)


def test_gaussian_kl_is_the_closed_form():
    rng = np.random.default_rng(0)
    mean_p, mean_q = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    std_p, std_q = np.array([0.5, 1.3]), np.array([0.8, 0.6])
    # KL(p || q) = log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2, per coordinate.
    expected = sum(
        math.log(std_q[a] / std_p[a]) + (std_p[a] ** 2 + (mean_p[:, a] - mean_q[:, a]) ** 2) / (2 * std_q[a] ** 2) - 0.5
        for a in range(2)
    )
    log = lambda s: jnp.log(jnp.asarray(s, jnp.float32))
    kl = objectives.gaussian_kl(
        jnp.asarray(mean_p, jnp.float32), log(std_p), jnp.asarray(mean_q, jnp.float32), log(std_q)
    )
    np.testing.assert_allclose(kl, expected, rtol=1e-5)


ENV = rl.Navigation2D(horizon=4)


def tiny(**options) -> rl.ProMP:
    return rl.ProMP(ENV, rl.GaussianMLPPolicy(hidden=(8,)), episodes=3, **options)


def test_inner_kl_term_is_the_closed_form_kl_to_the_sampling_policy():
    learner = tiny()
    episode = jax.tree.map(lambda a: a[0], rl.EnvTasks(ENV).sample(jax.random.key(0), 1))
    params = learner.init(jax.random.key(1), episode)["policy"]
    pre, post = jax.jit(learner.sample)(params, episode.support_x[0], jax.random.key(2))
    assert pre.log_probs.shape == (1, 3, 4) and post.means.shape == (3, 4, 2)
    moved = jax.tree.map(lambda a: a + 0.1, params)  # every weight and log-std moved
    cost = jax.jit(learner.outer_cost)
    _, kls = cost(params, jnp.zeros(1), pre, post)
    np.testing.assert_allclose(kls, [0.0], atol=1e-6)  # the sampling policy itself
    _, kls = cost(moved, jnp.zeros(1), pre, post)
    obs = np.asarray(pre.trajectories.observations[0]).reshape(-1, 2)
    mean_old, mean_new = (np.asarray(learner.policy.mean(p, obs), np.float64) for p in (params, moved))
    std_old, std_new = np.exp(np.asarray(params["log_std"], np.float64)), np.exp(np.asarray(moved["log_std"]))
    per_state = np.sum(
        np.log(std_new / std_old) + (std_old**2 + (mean_old - mean_new) ** 2) / (2 * std_new**2) - 0.5, axis=-1
    )
    assert per_state.mean() > 0.01
    np.testing.assert_allclose(kls, [per_state.mean()], rtol=1e-4)
    # The penalty enters the cost as mean(coeff * KL).
    (c0, _), (c2, _) = cost(moved, jnp.zeros(1), pre, post), cost(moved, jnp.full(1, 2.0), pre, post)
    np.testing.assert_allclose(c2 - c0, 2.0 * per_state.mean(), rtol=1e-3)


def test_first_outer_gradient_is_maml_rls_with_lvc():
    """Same key, same episodes: at ratio 1 the clipped objective's gradient is the LVC MAML-RL meta-gradient."""
    learner = tiny(inner_steps=2, init_inner_kl_coeff=0.0)
    maml = rl.MAMLRL(ENV, learner.policy, episodes=3, inner_steps=2, estimator="lvc")
    assert learner.maml == maml
    episode = jax.tree.map(lambda a: a[0], rl.EnvTasks(ENV).sample(jax.random.key(0), 1))
    params = learner.init(jax.random.key(1), episode)
    key = jax.random.key(3)
    promp_grad = jax.jit(jax.value_and_grad(lambda p: learner.loss(p, episode, key)[0]))
    maml_loss, maml_grad = jax.jit(jax.value_and_grad(lambda p: maml.loss(p, episode, key)[0]))(params["policy"])
    loss, grad = promp_grad(params)
    np.testing.assert_allclose(loss, maml_loss, rtol=1e-6)
    chex.assert_trees_all_close(grad["policy"], maml_grad, rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(maml_grad)) > 1e-3  # not trivially zero
    chex.assert_trees_all_equal(grad["inner_kl_coeff"], jnp.zeros(2))  # the coefficients get no gradient
    # The KL terms sit at their minimum there, so a coefficient adds nothing to the gradient.
    _, with_kl = promp_grad({**params, "inner_kl_coeff": jnp.full(2, 5.0)})
    chex.assert_trees_all_close(with_kl["policy"], maml_grad, rtol=1e-4, atol=1e-6)


def test_meta_update_takes_the_outer_steps_on_one_sample_and_adapts_the_kl_coefficients():
    learner = tiny(outer_steps=2, init_inner_kl_coeff=1.0)
    episodes = rl.EnvTasks(ENV).sample(jax.random.key(0), 2)
    params = learner.init(jax.random.key(1), jax.tree.map(lambda a: a[0], episodes))
    optimizer = optax.sgd(0.05)
    keys = jax.random.split(jax.random.key(2), 2)
    new, _, loss, metrics = jax.jit(learner.meta_update, static_argnums=4)(
        params, optimizer.init(params), episodes, keys, optimizer
    )

    @jax.jit
    def by_hand(params):  # two SGD steps on the mean outer cost of the same samples
        pre, post = jax.vmap(learner.sample, in_axes=(None, 0, 0))(params["policy"], episodes.support_x[:, 0], keys)
        cost = lambda p: jax.vmap(learner.outer_cost, in_axes=(None, None, 0, 0))(
            p, params["inner_kl_coeff"], pre, post
        )
        policy = params["policy"]
        for _ in range(2):
            policy = jax.tree.map(lambda w, g: w - 0.05 * g, policy, jax.grad(lambda p: cost(p)[0].mean())(policy))
        return policy, cost(policy)[1].mean(0), post.trajectories.returns.mean()

    policy, kl, mean_return = by_hand(params)
    chex.assert_trees_all_close(new["policy"], policy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["inner_kl_coeff"], adapt_kl_coeff(jnp.ones(1), kl, 0.01), rtol=1e-6)
    np.testing.assert_allclose(loss, -mean_return, rtol=1e-6)
    np.testing.assert_allclose(metrics["inner_kl"], kl.mean(), rtol=1e-4)


def test_meta_training_improves_the_post_adaptation_return():
    env = rl.Navigation2D(horizon=10)
    learner = rl.ProMP(env, rl.GaussianMLPPolicy(hidden=(16,)), episodes=10)
    state, history = metajax.train(
        learner, rl.EnvTasks(env), optax.adam(1e-2), key=jax.random.key(0), num_steps=30, meta_batch=10,
        log_every=10, progress=False,
    )  # fmt: skip
    returns = [entry["return"] for entry in history]  # of the adapted policies' episodes
    assert returns[-1] > returns[0] + 0.5, returns
    result = metajax.evaluate(learner, state.params, rl.EnvTasks(env), key=jax.random.key(5), num_tasks=20, num_steps=1)
    before, after = result["return"]["mean"]
    assert after > before, result


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clip_eps": 1.5}, r"clip_eps must be a number in \(0, 1\) \(PPO's clip range\), got 1.5"),
        ({"outer_steps": 0}, "outer_steps must be a positive integer, got 0"),
        ({"inner_steps": 0}, "inner_steps must be a positive integer, got 0"),
        ({"target_inner_kl": 0.0}, "target_inner_kl must be a positive number, got 0.0"),
    ],
)
def test_bad_promp_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_the_trainer_refuses_to_split_a_learner_that_meta_updates_itself():
    with pytest.raises(ValueError, match="ProMP makes its own meta-update, with its tasks vmapped on one device"):
        metajax.meta_step(tiny(), rl.EnvTasks(ENV), optax.adam(1e-3), 2, "map")
