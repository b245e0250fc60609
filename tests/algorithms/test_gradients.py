"""Meta-gradients against references: per-task loops, finite differences, closed forms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import one_task, regression_learners
from metajax import models, tasks


def _flat_fn(fn, params):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return (lambda v: fn(unravel(v))), flat, unravel


def _finite_difference(fn, x, eps=1e-6):
    grads = np.zeros(x.shape)
    for i in range(x.size):
        e = np.zeros(x.shape)
        e[i] = eps
        grads[i] = (fn(x + e) - fn(x - e)) / (2 * eps)
    return grads


@pytest.mark.parametrize("name", sorted(regression_learners()))
def test_vmapped_meta_gradient_equals_mean_of_per_task_gradients(name):
    learner = regression_learners()[name]
    task = tasks.Sinusoid(shots=5)
    episodes = task.sample(jax.random.key(0), 4)
    keys = jax.random.split(jax.random.key(1), 4)
    params = learner.init(jax.random.key(2), one_task(task))

    def batch_loss(p):
        return jnp.mean(jax.vmap(learner.loss, in_axes=(None, 0, 0))(p, episodes, keys)[0])

    batched = jax.grad(batch_loss)(params)
    per_task = [
        jax.grad(lambda p, i=i: learner.loss(p, jax.tree.map(lambda a: a[i], episodes), keys[i])[0])(params)
        for i in range(4)
    ]
    looped = jax.tree.map(lambda *g: sum(g) / 4, *per_task)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), batched, looped)


def test_second_order_maml_matches_finite_differences():
    with jax.enable_x64(True):
        task = tasks.Sinusoid(shots=4)
        episode = jax.tree.map(lambda a: a.astype(jnp.float64), one_task(task))
        learner = metajax.MAML(models.MLP(hidden=(3,), out=1), inner_lr=0.1, inner_steps=2)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), learner.init(jax.random.key(0), episode))
        fn, flat, unravel = _flat_fn(lambda p: learner.loss(p, episode, jax.random.key(0))[0], params)
        analytic = jax.flatten_util.ravel_pytree(jax.grad(lambda p: learner.loss(p, episode, None)[0])(params))[0]
        numeric = _finite_difference(jax.jit(fn), np.asarray(flat))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_first_order_equals_query_gradient_at_adapted_weights():
    """FOMAML is second order with the inner gradients' dependence on params removed."""
    task = tasks.Sinusoid(shots=5)
    episode = one_task(task)
    mlp = models.MLP(hidden=(8,), out=1)
    second = metajax.MAML(mlp, inner_lr=0.05, inner_steps=3)
    first = metajax.MAML(mlp, inner_lr=0.05, inner_steps=3, meta_gradient=metajax.FirstOrder())
    params = second.init(jax.random.key(0), episode)
    adapted = second.adapt(params, episode.support, None)

    def query_loss(p):
        return metajax.losses.mse(second.predict(p, episode.query_x), episode.query_y)[0]

    expected = jax.grad(query_loss)(adapted)
    g_first = jax.grad(lambda p: first.loss(p, episode, None)[0])(params)
    g_second = jax.grad(lambda p: second.loss(p, episode, None)[0])(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_first, expected)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g_first, g_second)
    assert max(jax.tree.leaves(diff)) > 1e-4, "second order should differ from first order here"


def test_reptile_direction_is_params_minus_adapted():
    task = tasks.Sinusoid(shots=5)
    episode = one_task(task)
    learner = metajax.Reptile(models.MLP(hidden=(8,), out=1), inner_lr=0.02, inner_steps=4)
    params = learner.init(jax.random.key(0), episode)
    adapted = params
    for _ in range(4):  # plain SGD by hand
        g = jax.grad(lambda p: metajax.losses.mse(learner.predict(p, episode.support_x), episode.support_y)[0])(adapted)
        adapted = jax.tree.map(lambda p, g: p - 0.02 * g, adapted, g)
    grad = jax.grad(lambda p: learner.loss(p, episode, None)[0])(params)
    jax.tree.map(lambda g, p, a: np.testing.assert_allclose(g, p - a, rtol=1e-4, atol=1e-6), grad, params, adapted)


@pytest.mark.parametrize("meta_gradient", [metajax.SecondOrder(), metajax.FirstOrder()])
def test_metasgd_step_sizes_receive_gradient(meta_gradient):
    task = tasks.Sinusoid(shots=5)
    episode = one_task(task)
    learner = metajax.MetaSGD(models.MLP(hidden=(8,), out=1), inner_lr=0.01, meta_gradient=meta_gradient)
    params = learner.init(jax.random.key(0), episode)
    grad = jax.grad(lambda p: learner.loss(p, episode, None)[0])(params)
    for leaf in jax.tree.leaves(grad["lr"]):
        assert float(jnp.max(jnp.abs(leaf))) > 0


def test_anil_adapts_only_the_head():
    task = tasks.Sinusoid(shots=5)
    episode = one_task(task)
    learner = metajax.ANIL(models.MLP(hidden=(8,), out=None), nn.Dense(1), inner_lr=0.1, inner_steps=2)
    params = learner.init(jax.random.key(0), episode)
    adapted = learner.adapt(params, episode.support, None)
    jax.tree.map(np.testing.assert_array_equal, adapted["body"], params["body"])
    assert not np.allclose(adapted["head"]["kernel"], params["head"]["kernel"])
    grad = jax.grad(lambda p: learner.loss(p, episode, None)[0])(params)
    assert float(jnp.abs(grad["body"]["Dense_0"]["kernel"]).max()) > 0


def test_implicit_gradient_matches_exact_proximal_solution():
    """iMAML on linear regression: the proximal inner problem has a closed form."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        d, n, lam = 3, 8, 2.0
        sx, qx = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        w_true = rng.normal(size=(d, 1))
        sy, qy = sx @ w_true + 0.1 * rng.normal(size=(n, 1)), qx @ w_true
        episode = metajax.Episode(*map(jnp.asarray, (sx, sy, qx, qy)))
        model = nn.Dense(1, use_bias=False)
        learner = metajax.MAML(
            model,
            inner_lr=0.1,
            inner_steps=300,
            meta_gradient=metajax.Implicit(prox=lam, cg_steps=d),
        )
        theta = {"kernel": jnp.asarray(rng.normal(size=(d, 1)))}

        def exact_query_loss(t):
            # argmin_phi mean((X phi - y)^2) + lam/2 ||phi - t||^2
            a = 2 / n * sx.T @ sx + lam * np.eye(d)
            phi = np.linalg.solve(a, 2 / n * sx.T @ sy + lam * t.reshape(d, 1))
            return float(np.mean((qx @ phi - qy) ** 2))

        numeric = _finite_difference(exact_query_loss, np.asarray(theta["kernel"]).ravel(), eps=1e-5)
        analytic = jax.grad(lambda p: learner.loss(p, episode, None)[0])(theta)["kernel"].ravel()
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-7)


def test_inner_loop_with_adam_optimizer_is_differentiable():
    task = tasks.Sinusoid(shots=5)
    episode = one_task(task)
    learner = metajax.MAML(models.MLP(hidden=(8,), out=1), inner_optimizer=optax.adam(0.01), inner_steps=3)
    params = learner.init(jax.random.key(0), episode)
    loss, grad = jax.value_and_grad(lambda p: learner.loss(p, episode, None)[0])(params)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))


def test_remat_gives_the_same_meta_gradient():
    task = tasks.Sinusoid(shots=5)
    episode = one_task(task)
    plain = metajax.MAML(models.MLP(hidden=(8,), out=1), inner_lr=0.05, inner_steps=3)
    remat = metajax.MAML(models.MLP(hidden=(8,), out=1), inner_lr=0.05, inner_steps=3, remat=True)
    params = plain.init(jax.random.key(0), episode)
    g1 = jax.grad(lambda p: plain.loss(p, episode, None)[0])(params)
    g2 = jax.grad(lambda p: remat.loss(p, episode, None)[0])(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)
