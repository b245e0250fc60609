"""Environments written in JAX, and rollouts of a policy in them.

An environment is a frozen configuration with pure functions of fixed shapes (so one
compiled program serves a run, and ``vmap`` batches tasks and episodes):

* ``sample_tasks(key, n) -> tasks [n, task_size]``: task descriptors (a goal, a velocity);
* ``reset(task) -> (state, obs [observation_size])``;
* ``step(state, action [action_size], task) -> (state, obs, reward [])``;
* ``horizon``, ``observation_size``, ``action_size``, ``task_size``: static sizes.

:func:`rollout` runs ``horizon`` steps as one ``lax.scan`` and ``vmap``s episodes;
:class:`EnvTasks` presents an environment's tasks to :func:`metajax.train` and
:func:`metajax.evaluate` as episodes whose only content is the task descriptor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from metajax._checks import check_positive, check_positive_int
from metajax.episode import Episode

Params = Any


@runtime_checkable
class Environment(Protocol):
    """What :func:`rollout` and the RL learners need of an environment (see the module docstring)."""

    horizon: int
    observation_size: int
    action_size: int
    task_size: int

    def sample_tasks(self, key: jax.Array, num_tasks: int) -> jax.Array:
        """Task descriptors ``[num_tasks, task_size]``."""
        ...

    def reset(self, task: jax.Array) -> tuple[Any, jax.Array]:
        """``(state, observation [observation_size])`` at the start of an episode of ``task``."""
        ...

    def step(self, state: Any, action: jax.Array, task: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """``(state, observation, reward)`` after ``action [action_size]``."""
        ...


class PointState(struct.PyTreeNode):
    """State of the point robot: ``position [2]``."""

    position: jax.Array


@dataclasses.dataclass(frozen=True)
class Navigation2D:
    """2D navigation (Finn et al., 2017, section 5.3): a point robot moves to a goal.

    The robot starts at the origin; a task is a goal drawn uniformly from
    ``[-goal_range, goal_range]^2``. An action (a displacement) is clipped to
    ``[-max_action, max_action]`` per coordinate; the reward is minus the Euclidean distance
    from the new position to the goal; the observation is the position. Episodes last
    ``horizon`` steps (no early termination, so every trajectory has the same shape).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> env = Navigation2D()
        >>> state, obs = env.reset(jnp.array([0.3, 0.4]))
        >>> state, obs, reward = env.step(state, jnp.array([0.5, 0.0]), jnp.array([0.3, 0.4]))
        >>> obs.tolist(), round(float(reward), 4)
        ([0.10000000149011612, 0.0], -0.4472)
    """

    horizon: int = 100
    goal_range: float = 0.5
    max_action: float = 0.1
    observation_size: int = 2
    action_size: int = 2
    task_size: int = 2

    def __post_init__(self):
        check_positive_int("horizon", self.horizon)
        check_positive("goal_range", self.goal_range)
        check_positive("max_action", self.max_action)

    def sample_tasks(self, key: jax.Array, num_tasks: int) -> jax.Array:
        """Goals ``[num_tasks, 2]``, uniform in ``[-goal_range, goal_range]^2``."""
        return jax.random.uniform(key, (num_tasks, 2), minval=-self.goal_range, maxval=self.goal_range)

    def reset(self, task: jax.Array) -> tuple[PointState, jax.Array]:
        """The robot at the origin: ``(state, observation [2])``."""
        position = jnp.zeros(2, task.dtype)
        return PointState(position), position

    def step(self, state: PointState, action: jax.Array, task: jax.Array) -> tuple[PointState, jax.Array, jax.Array]:
        """Move by the clipped ``action [2]``; reward ``-||position - goal||`` after the move."""
        position = state.position + jnp.clip(action, -self.max_action, self.max_action)
        return PointState(position), position, -jnp.linalg.norm(position - task)


class Trajectories(struct.PyTreeNode):
    """Episodes of one task: ``observations [E, T, O]`` (before each action), ``actions [E, T, A]``, ``rewards [E, T]``.

    ``E`` episodes of ``T = horizon`` steps; the actions are the policy's samples, before the
    environment clips them (their log-likelihood is the policy's).
    """

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array

    @property
    def returns(self) -> jax.Array:
        """The undiscounted return of each episode, ``[E]``."""
        return self.rewards.sum(-1)


def rollout(env: Environment, policy: Any, params: Params, task: jax.Array, key: jax.Array, episodes: int):
    """``episodes`` episodes of ``policy`` with ``params`` on ``task``, as :class:`Trajectories`.

    Args:
        env: an :class:`Environment`.
        policy: has ``sample(params, obs [O], key) -> action [A]`` (e.g.
            :class:`~metajax.rl.GaussianMLPPolicy`).
        params: the policy's parameters (not differentiated through: the trajectories are
            samples; estimators differentiate their log-likelihood).
        task: the task descriptor ``[task_size]``.
        key: PRNG key; the same key gives the same episodes.
        episodes: number of episodes ``E`` (static).

    Returns:
        :class:`Trajectories` with arrays ``[E, horizon, ...]``.
    """
    check_positive_int("episodes", episodes)
    params = jax.lax.stop_gradient(params)

    def one(key):
        state, obs = env.reset(task)

        def step(carry, k):
            state, obs = carry
            action = policy.sample(params, obs, k)
            state, next_obs, reward = env.step(state, action, task)
            return (state, next_obs), (obs, action, reward)

        _, (obs, actions, rewards) = jax.lax.scan(step, (state, obs), jax.random.split(key, env.horizon))
        return Trajectories(obs, actions, rewards)

    return jax.vmap(one)(jax.random.split(key, episodes))


@dataclasses.dataclass(frozen=True)
class EnvTasks:
    """An environment's tasks as a task distribution for :func:`metajax.train` and :func:`metajax.evaluate`.

    An RL task is its descriptor: ``sample`` returns episodes whose ``support_x`` and
    ``query_x`` are the task ``[tasks, 1, task_size]`` (the same task before and after
    adaptation) and whose ``support_y`` and ``query_y`` are zeros ``[tasks, 1]``; the
    learner rolls the environment out itself.

    Example:
        >>> import jax
        >>> EnvTasks(Navigation2D()).sample(jax.random.key(0), 4).support_x.shape
        (4, 1, 2)
    """

    env: Any
    kind: ClassVar[str] = "reinforcement"

    def sample(self, key: jax.Array, num_tasks: int) -> Episode:
        """``num_tasks`` tasks of the environment, as episodes (see the class docstring)."""
        tasks = self.env.sample_tasks(key, num_tasks)[:, None, :]
        zeros = jnp.zeros((num_tasks, 1), tasks.dtype)
        return Episode(tasks, zeros, tasks, zeros)
