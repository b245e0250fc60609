"""MAML++ (Antoniou et al. 2019): each option against a computation written out by hand.

LSLR's update against explicit ``w - rate[k] * grad``; the multi-step loss against the
weighted sum of separately computed query losses, its weights against the reference
implementation's schedule; derivative-order annealing against FOMAML's and MAML's
gradients (in one compiled program); the cosine meta step size against its formula.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import losses, models
from metajax.algorithms.maml import msl_weights
from metajax.app import cli

STEPS = 3
NET = models.MLP(hidden=(4,), out=1)


def _reference_weights(n: int, epoch: int, msl_epochs: int) -> np.ndarray:
    """``get_per_step_loss_importance_vector`` of HowToTrainYourMAMLPytorch, with its MSL cut-off."""
    if epoch >= msl_epochs:  # the reference then optimises the last step's loss only
        return np.eye(n)[-1]
    weights = np.ones(n) / n
    decay, floor = 1.0 / n / msl_epochs, 0.03 / n
    for i in range(n - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return weights


@pytest.mark.parametrize("n", [1, 2, 5])
def test_msl_weights_follow_the_reference_schedule(n):
    for epoch in (0, 1, 3, 9, 19, 20, 50):
        np.testing.assert_allclose(msl_weights(n, epoch, 20), _reference_weights(n, epoch, 20), rtol=1e-6, atol=1e-7)
    # Under jit with a traced epoch, as in the meta-step.
    np.testing.assert_allclose(jax.jit(lambda e: msl_weights(n, e, 20))(7), _reference_weights(n, 7, 20), rtol=1e-6)


def _learner(**options):
    return metajax.MAML(NET, inner_lr=0.05, inner_steps=STEPS, learned_rates=True, objective=losses.mse, **options)


def _episode(seed=0):
    return jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid(shots=4, queries=3).sample(jax.random.key(seed), 1))


def _params(learner, episode):
    params = learner.init(jax.random.key(1), episode)
    # Distinct rates per tensor and per step, so a wrong index shows.
    rates = jax.tree.map(lambda r: r * jnp.array([1.0, 2.0, 0.5]), params["lr"])
    rates = jax.tree.map(
        lambda r, s: r * s, rates, {"Dense_0": {"bias": 1.5, "kernel": 1.0}, "Dense_1": {"bias": 0.7, "kernel": 1.2}}
    )
    return {"model": params["model"], "lr": rates}


def _by_hand(params, episode):
    """The weights before and after each inner step: ``w_{k+1} = w_k - lr[k] * grad L_support(w_k)``."""

    def support_loss(w):
        return jnp.mean(jnp.square(NET.apply({"params": w}, episode.support_x) - episode.support_y))

    ws = [params["model"]]
    for k in range(STEPS):
        g = jax.grad(support_loss)(ws[-1])
        ws.append(jax.tree.map(lambda w, r, gi, k=k: w - r[k] * gi, ws[-1], params["lr"], g))
    return ws


def _query_loss(w, episode):
    return jnp.mean(jnp.square(NET.apply({"params": w}, episode.query_x) - episode.query_y))


def test_lslr_step_equals_the_hand_written_update_and_rates_receive_gradients():
    learner, episode = _learner(), _episode()
    params = _params(learner, episode)
    assert jax.tree.map(jnp.shape, params["lr"]) == jax.tree.map(lambda _: (STEPS,), params["model"])
    adapted = learner.adapt(params, episode.support, None)
    chex.assert_trees_all_close(adapted, _by_hand(params, episode)[-1], rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: learner.loss(p, episode, None)[0])(params)
    reference = jax.grad(lambda p: _query_loss(_by_hand(p, episode)[-1], episode))(params)
    chex.assert_trees_all_close(grads, reference, rtol=1e-4, atol=1e-6)
    assert all(bool(jnp.all(g != 0)) for g in jax.tree.leaves(grads["lr"]))  # every tensor's rate at every step


def test_multi_step_loss_is_the_weighted_sum_of_each_steps_query_loss():
    learner, episode = _learner(msl_epochs=4, epoch_steps=10), _episode(1)
    params = _params(learner, episode)
    ws = _by_hand(params, episode)
    for step, epoch in ((0, 0), (25, 2), (39, 3), (40, 4)):
        loss, metrics = learner.loss_at(params, episode, None, jnp.int32(step))
        expected = sum(w * _query_loss(ws[k + 1], episode) for k, w in enumerate(_reference_weights(STEPS, epoch, 4)))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        np.testing.assert_allclose(metrics["mse"], _query_loss(ws[-1], episode), rtol=1e-5)  # the final step's
    # After the multi-step epochs, loss_at is loss: the last step's query loss.
    np.testing.assert_allclose(learner.loss(params, episode, None)[0], _query_loss(ws[-1], episode), rtol=1e-5)


def test_derivative_order_annealing_switches_from_fomaml_to_maml_gradients_in_one_program():
    annealed = _learner(first_order_epochs=2, epoch_steps=5)
    episode = _episode(2)
    params = _params(annealed, episode)
    traces = []

    @jax.jit
    def grad_at(p, step):
        traces.append(step)
        return jax.grad(lambda q: annealed.loss_at(q, episode, None, step)[0])(p)

    first = jax.grad(lambda p: _learner(meta_gradient=metajax.FirstOrder()).loss(p, episode, None)[0])(params)
    second = jax.grad(lambda p: _learner().loss(p, episode, None)[0])(params)
    for step in (0, 9):  # epochs 0 and 1: first order
        chex.assert_trees_all_close(grad_at(params, jnp.int32(step)), first, rtol=1e-5, atol=1e-7)
    for step in (10, 100):  # from epoch 2: second order
        chex.assert_trees_all_close(grad_at(params, jnp.int32(step)), second, rtol=1e-5, atol=1e-7)
    assert len(traces) == 1
    assert not np.allclose(first["model"]["Dense_0"]["kernel"], second["model"]["Dense_0"]["kernel"])


def test_cosine_meta_learning_rate_follows_its_formula():
    args = cli.parse(["train", "--algo", "maml++", "--steps", "100", "--meta-lr", "0.002", "--out", "unused"])
    cli._fill_defaults(args)
    cli._check_meta_lr_schedule(args)
    schedule = cli.meta_learning_rate(args)
    low, high = 1e-5, 0.002
    for t in (0, 10, 50, 77, 100, 150):
        expected = low + (high - low) * (1 + math.cos(math.pi * min(t, 100) / 100)) / 2
        np.testing.assert_allclose(schedule(t), expected, rtol=1e-5)
    args = cli.parse(["train", "--algo", "maml", "--out", "unused"])
    cli._fill_defaults(args)
    assert cli.meta_learning_rate(args) == 1e-3  # MAML keeps a constant step size


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            dict(inner_optimizer=metajax.algorithms.scale_by_learned_rates({})),
            ValueError,
            "inner_optimizer must be None",
        ),
        (dict(meta_gradient=metajax.Implicit()), ValueError, "learned_rates needs the inner steps on the tape"),
        (
            dict(first_order_epochs=2, meta_gradient=metajax.FirstOrder()),
            ValueError,
            r"first_order_epochs=2 anneals FirstOrder\(\) into SecondOrder",
        ),
        (dict(msl_epochs=-1), ValueError, "msl_epochs must be a non-negative integer, got -1"),
    ],
)
def test_bad_mamlpp_configuration_is_named(options, error, message):
    with pytest.raises(error, match=message):
        _learner(**options)
