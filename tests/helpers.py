"""Small shared pieces for the tests."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import learner as registry
from metajax import models
from metajax.rl.envs import PointState


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a ``--coordinator`` in tests: loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_task(task, seed: int = 0):
    """An unbatched episode of ``task``."""
    return jax.tree.map(lambda a: a[0], task.sample(jax.random.key(seed), 1))


def assert_deterministic_per_key(draw, task) -> None:
    """``draw(task, key, 4)`` gives the same episodes for the same key and others for another."""
    a, b, c = (draw(task, jax.random.key(k), 4) for k in (7, 7, 8))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.support_x, c.support_x)


def assert_one_rotation_per_class(episode, channel: int) -> None:
    """Each class of every task in ``episode`` (batched, images marked at their top-left corner in
    ``channel``) is turned by one multiple of 90 degrees, and all four turns occur in the batch."""
    corner = {(0, 0): 0, (2, 0): 1, (2, 2): 2, (0, 2): 3}  # the marker after k counter-clockwise turns
    seen = set()
    for t in range(episode.support_x.shape[0]):
        turns = {}
        for x, label in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
            for image, y in zip(np.asarray(x[t]), np.asarray(label[t]), strict=True):
                (position,) = zip(*np.nonzero(image[..., channel]), strict=True)
                assert turns.setdefault(int(y), corner[position]) == corner[position]  # one turn per class
        seen |= set(turns.values())
    assert seen == {0, 1, 2, 3}


class CountingLearner:
    """Delegates to a learner and counts how often ``loss`` is traced."""

    def __init__(self, learner):
        self.learner, self.traces = learner, 0

    def init(self, key, episode):
        return self.learner.init(key, episode)

    def adapted_params(self, params):
        return self.learner.adapted_params(params)

    def loss(self, params, episode, key):
        self.traces += 1
        return self.learner.loss(params, episode, key)


def assert_queries_answered_alone(learner, episode) -> jax.Array:
    """Assert that ``learner`` answers ``episode``'s queries together as it does one at a time; the outputs."""
    adapted = learner.adapt(learner.init(jax.random.key(0), episode), episode.support, None)
    together = learner.predict(adapted, episode.query_x)
    alone = jnp.concatenate([learner.predict(adapted, q[None]) for q in episode.query_x])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    return together


def regression_learners(hidden=(16,), inner_steps: int = 2, inner_lr: float = 0.05) -> dict:
    """Every registered gradient-based learner, configured for 1-D regression."""
    spec = registry.Spec(
        "regression", 1, lambda out: models.MLP(hidden=hidden, out=out), inner_lr=inner_lr, inner_steps=inner_steps
    )
    return {name: registry.build(name, spec, prox=2.0, cg_steps=3) for name in registry.names(family="gradient")}


class Flatten(nn.Module):
    """A parameter-free embedding: the inputs themselves, flattened."""

    @nn.compact
    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


def separable_vectors(key, num_tasks, ways=3, shots=2, queries=3, dim=8):
    """Batched tasks in which only the first 2 of ``dim`` features tell the classes apart."""

    def one(key):
        k_centers, k_perm, k_support, k_query = jax.random.split(key, 4)
        centers = jnp.zeros((ways, dim)).at[:, :2].set(2.0 * jax.random.normal(k_centers, (ways, 2)))
        sy = jax.random.permutation(k_perm, jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots))
        qy = jnp.repeat(jnp.arange(ways, dtype=jnp.int32), queries)
        sx = centers[sy] + jax.random.normal(k_support, (ways * shots, dim))
        qx = centers[qy] + jax.random.normal(k_query, (ways * queries, dim))
        return metajax.Episode(sx, sy, qx, qy)

    return jax.vmap(one)(jax.random.split(key, num_tasks))


@dataclasses.dataclass(frozen=True)
class VectorTasks:
    """A cheap classification task distribution: :func:`separable_vectors` episodes."""

    ways: int = 3
    shots: int = 2
    queries: int = 1
    dim: int = 8
    kind = "classification"

    def sample(self, key, num_tasks):
        return separable_vectors(key, num_tasks, self.ways, self.shots, self.queries, self.dim)


def held_out_loss_before_after(learner, steps: int, learning_rate: float = 1e-2) -> tuple[float, float]:
    """Mean query loss on 16 held-out :func:`separable_vectors` tasks before and after ``steps`` Adam steps.

    Each step draws 8 fresh tasks.
    """
    held_out = separable_vectors(jax.random.key(0), 16)
    params = learner.init(jax.random.key(1), jax.tree.map(lambda a: a[0], held_out))
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    def batch_loss(params, episodes):
        keys = jax.random.split(jax.random.key(0), episodes.query_y.shape[0])
        return jnp.mean(jax.vmap(learner.loss, in_axes=(None, 0, 0))(params, episodes, keys)[0])

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(batch_loss)(params, separable_vectors(key, 8))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    before = jax.jit(batch_loss)(params, held_out)
    for key in jax.random.split(jax.random.key(2), steps):
        params, opt_state = step(params, opt_state, key)
    return float(before), float(jax.jit(batch_loss)(params, held_out))


# ----------------------------------------------------------------------------- RL


@dataclasses.dataclass(frozen=True)
class QuadraticPoint:
    """A 1-D point from 0: ``s' = s + a``, reward ``-(s' - goal)^2``, unclipped; horizon 1 is a Gaussian bandit.

    With a linear Gaussian policy its expected return is a closed-form function of the
    policy's parameters (:func:`expected_return`).
    """

    horizon: int = 1
    observation_size: int = 1
    action_size: int = 1
    task_size: int = 1

    def sample_tasks(self, key, num_tasks):
        return jax.random.uniform(key, (num_tasks, 1))

    def reset(self, task):
        return PointState(jnp.zeros(1)), jnp.zeros(1)

    def step(self, state, action, task):
        position = state.position + action
        return PointState(position), position, -jnp.sum((position - task) ** 2)


def expected_return(theta, goal, horizon):
    """E[sum of rewards] of ``a_t ~ N(w s_t + b, exp(2 s))`` on :class:`QuadraticPoint`, ``theta = (w, b, s)``."""
    w, b, log_std = theta
    var = jnp.exp(2 * log_std)
    value = -((b - goal) ** 2 + var)  # s_1 = a_0 ~ N(b, var)
    if horizon == 2:  # s_2 = (1 + w) s_1 + b + noise
        mean2, var2 = (1 + w) * b + b, (1 + w) ** 2 * var + var
        value = value - ((mean2 - goal) ** 2 + var2)
    return value


def linear_policy_params(theta):
    """The parameters of ``GaussianMLPPolicy(hidden=())`` (mean ``w s + b``) for ``theta = (w, b, log_std)``."""
    w, b, log_std = theta
    dense = {"kernel": jnp.full((1, 1), w), "bias": jnp.full((1,), b)}
    return {"mean": {"Dense_0": dense}, "log_std": jnp.full((1,), log_std)}


def as_theta(grads):
    dense = grads["mean"]["Dense_0"]
    return np.array([dense["kernel"][0, 0], dense["bias"][0], grads["log_std"][0]])


def cache_of(cache: Path, dataset: str, root: Path) -> Path:
    """Where the loaders cache ``dataset`` decoded from the data folder ``root``: a folder per resolved root."""
    return cache / dataset / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
