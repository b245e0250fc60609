"""Meta-gradients against references: per-task loops, finite differences, closed forms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from helpers import one_task
from metajax import learner as registry
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
            meta_gradient=metajax.Implicit(prox=lam, cg_steps=d, damping=0.0),  # exact: undamped
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


def _mlp_implicit_problem(prox, damping, inner_steps, inner_lr=0.05):
    """A float64 iMAML learner on a 13-weight MLP, its parameters, a sinusoid task and flat support/query losses."""
    task = tasks.Sinusoid(shots=5)
    episode = jax.tree.map(lambda a: a.astype(jnp.float64), one_task(task, seed=1))
    # cg_steps = the number of weights: on a positive definite system CG is then an exact solve.
    implicit = metajax.Implicit(prox=prox, cg_steps=13, damping=damping)
    learner = metajax.MAML(
        models.MLP(hidden=(4,), out=1), inner_lr=inner_lr, inner_steps=inner_steps, meta_gradient=implicit
    )
    params = jax.tree.map(lambda a: a.astype(jnp.float64), learner.init(jax.random.key(0), episode))
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def mse(x, y):
        return lambda v: jnp.mean((learner.predict(unravel(v), x) - y) ** 2)

    return learner, params, episode, flat, mse(*episode.support), mse(*episode.query)


@pytest.mark.parametrize("damping", [0.0, 5.0])
def test_implicit_gradient_on_an_mlp_is_the_explicit_hessian_solve(damping):
    """The meta-gradient is ``(I + H / (prox + damping))^-1 g`` with ``H`` formed explicitly and solved directly."""
    with jax.enable_x64(True):
        prox = 2.0
        learner, params, episode, flat, support_loss, query_loss = _mlp_implicit_problem(prox, damping, inner_steps=5)
        phi = jax.flatten_util.ravel_pytree(jax.jit(learner.adapt)(params, episode.support, None))[0]
        hessian = np.asarray(jax.hessian(support_loss)(phi))
        assert np.linalg.eigvalsh(hessian).min() > -prox  # the undamped system is positive definite here too
        expected = np.linalg.solve(
            np.eye(flat.size) + hessian / (prox + damping), np.asarray(jax.grad(query_loss)(phi))
        )
        analytic = jax.flatten_util.ravel_pytree(
            jax.jit(jax.grad(lambda p: learner.loss(p, episode, None)[0]))(params)
        )[0]
        np.testing.assert_allclose(analytic, expected, rtol=1e-6, atol=1e-9)


def test_implicit_gradient_on_an_mlp_matches_finite_differences_of_the_proximal_solution():
    """Undamped, with the inner problem solved, it is the gradient of the query loss at the proximal solution."""
    with jax.enable_x64(True):
        prox, lr = 5.0, 0.01  # the inner descent contracts by 1 - lr * prox per step in the flattest direction
        learner, params, episode, flat, support_loss, query_loss = _mlp_implicit_problem(prox, 0.0, 800, lr)

        @jax.jit
        def query_loss_at_the_solution(theta):
            # argmin_phi support_loss(phi) + prox/2 ||phi - theta||^2, by plain gradient descent written out here
            step = lambda _, phi: phi - lr * (jax.grad(support_loss)(phi) + prox * (phi - theta))
            return query_loss(jax.lax.fori_loop(0, 2000, step, theta))

        numeric = _finite_difference(lambda v: float(query_loss_at_the_solution(v)), np.asarray(flat), eps=1e-5)
        analytic = jax.flatten_util.ravel_pytree(
            jax.jit(jax.grad(lambda p: learner.loss(p, episode, None)[0]))(params)
        )[0]
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-7)


def test_implicit_damping_must_be_non_negative():
    with pytest.raises(ValueError, match=r"Implicit.damping must be a non-negative number, got -1.0"):
        metajax.Implicit(damping=-1.0)
    spec = registry.Spec("regression", 1, lambda out: models.MLP(hidden=(4,), out=out), inner_lr=0.1, inner_steps=1)
    for option in ("cg_damping", "inner_clip"):  # the registry's iMAML names its own options
        with pytest.raises(ValueError, match=rf"^{option} must be a non-negative number, got -1"):
            registry.build("imaml", spec, **{option: -1.0})


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


def _sgd_example_loss(w, xy):
    x, y = xy
    return jnp.sum(jnp.square(x @ w - y)), None


def test_per_step_inner_loop_equals_an_unrolled_loop_and_its_gradient():
    xs = jax.random.normal(jax.random.key(0), (4, 1, 3))  # 4 steps, one example each
    ys = jax.random.normal(jax.random.key(1), (4, 1))
    w0 = jax.random.normal(jax.random.key(2), (3,))

    def unrolled(w):
        for x, y in zip(xs, ys, strict=True):
            w = w - 0.1 * jax.grad(lambda v, x=x, y=y: jnp.sum(jnp.square(x @ v - y)))(w)
        return w

    def looped(w, meta_gradient):
        return metajax.inner_loop(_sgd_example_loss, w, (xs, ys), optax.sgd(0.1), None, meta_gradient, per_step=True)[0]

    np.testing.assert_allclose(looped(w0, metajax.SecondOrder()), unrolled(w0), rtol=1e-6)
    second = jax.jacobian(lambda w: looped(w, metajax.SecondOrder()))(w0)
    np.testing.assert_allclose(second, jax.jacobian(unrolled)(w0), rtol=1e-5, atol=1e-6)
    # First order: every inner gradient is a constant, so d(adapted)/d(w0) is the identity.
    np.testing.assert_allclose(jax.jacobian(lambda w: looped(w, metajax.FirstOrder()))(w0), np.eye(3), atol=1e-6)


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
def test_inner_loop_and_its_tracked_values_equal_an_unrolled_loop_under_vmap(steps):
    """Tasks batched with ``vmap`` and shared starting weights, against a Python loop per task (any step count)."""
    x = jax.random.normal(jax.random.key(0), (4, 5, 3))  # 4 tasks of 5 examples
    y = jax.random.normal(jax.random.key(1), (4, 5))
    w0 = jax.random.normal(jax.random.key(2), (3,))

    def loss(w, xy):
        return jnp.mean(jnp.square(xy[0] @ w - xy[1])), None

    def unrolled(w, xy):
        ws = [w]
        for _ in range(steps):
            ws.append(ws[-1] - 0.1 * jax.grad(lambda v: loss(v, xy)[0])(ws[-1]))
        return ws[-1], jnp.stack([loss(v, xy)[0] for v in ws])

    def looped(w, xy):
        return metajax.inner_loop(loss, w, xy, optax.sgd(0.1), steps, track=lambda v: loss(v, xy)[0])

    adapted, tracked = jax.vmap(looped, in_axes=(None, 0))(w0, (x, y))
    for task in range(4):
        expected_w, expected_losses = unrolled(w0, (x[task], y[task]))
        np.testing.assert_allclose(adapted[task], expected_w, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tracked[task], expected_losses, rtol=1e-6, atol=1e-7)
    meta = jax.grad(lambda w: jnp.sum(jax.vmap(looped, in_axes=(None, 0))(w, (x, y))[0] ** 2))(w0)
    reference = jax.grad(lambda w: sum(jnp.sum(unrolled(w, (x[t], y[t]))[0] ** 2) for t in range(4)))(w0)
    np.testing.assert_allclose(meta, reference, rtol=1e-5, atol=1e-6)


def test_per_step_data_is_checked_and_implicit_refuses_it():
    xs, ys, w0 = jnp.zeros((4, 1, 3)), jnp.zeros((4, 1)), jnp.zeros(3)
    with pytest.raises(ValueError, match=r"one leading size equal to num_steps=3; got leading sizes \[4\]"):
        metajax.inner_loop(_sgd_example_loss, w0, (xs, ys), optax.sgd(0.1), 3, per_step=True)
    with pytest.raises(ValueError, match="Implicit\\(\\) differentiates the solution of one inner problem"):
        metajax.inner_loop(_sgd_example_loss, w0, (xs, ys), optax.sgd(0.1), None, metajax.Implicit(), per_step=True)


def test_a_new_meta_gradient_is_one_class_with_its_own_loop():
    class NoAdaptation(metajax.MetaGradient):
        """Adaptation skipped: the meta-gradient is the query gradient at the meta-parameters."""

        def loop(self, loss_fn, params, data, optimizer, num_steps, *, per_step, track, remat):
            tracked = None if track is None else jax.tree.map(lambda a: jnp.stack([a] * (num_steps + 1)), track(params))
            return params, tracked

    episode = one_task(tasks.Sinusoid(shots=5))
    net = models.MLP(hidden=(8,), out=1)
    learner = metajax.MAML(net, inner_lr=0.1, meta_gradient=NoAdaptation())
    params = learner.init(jax.random.key(0), episode)
    expected = jnp.mean(jnp.square(net.apply({"params": params}, episode.query_x) - episode.query_y))
    np.testing.assert_allclose(learner.loss(params, episode, None)[0], expected, rtol=1e-6)
    assert learner.evaluate(params, episode, None, 2)["mse"].shape == (3,)
    with pytest.raises(TypeError, match="meta_gradient must be a metajax.MetaGradient"):
        metajax.MAML(net, meta_gradient=object())


def test_optimize_keeps_the_optimizer_state_between_calls():
    def loss(w, _):
        return jnp.sum(jnp.square(w - 3.0)), {"w": w}

    adam = optax.adam(0.5)
    w, state = jnp.zeros(2), adam.init(jnp.zeros(2))
    for _ in range(2):
        w, state, aux = metajax.algorithms.optimize(loss, w, state, adam, num_steps=2)
    reference, ref_state = jnp.zeros(2), adam.init(jnp.zeros(2))
    for _ in range(4):
        updates, ref_state = adam.update(jax.grad(lambda v: loss(v, None)[0])(reference), ref_state, reference)
        reference = optax.apply_updates(reference, updates)
    np.testing.assert_allclose(w, reference, rtol=1e-6)
    assert aux["w"].shape == (2,)  # the last step's aux, taken before its update
