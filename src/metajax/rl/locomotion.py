"""Half-cheetah locomotion tasks (Finn et al., 2017, section 5.3) on the Brax physics engine.

MAML's two locomotion task families on a planar cheetah: ``HalfCheetahVel`` (run at a goal
velocity drawn uniformly from ``[0, 2]``) and ``HalfCheetahDir`` (run forward or backward,
each with probability 1/2). The reward of a step is the task term minus the control cost
``0.05 * ||action||^2`` of MAML's environments: ``-|v - goal|`` for a velocity task,
``direction * v`` for a direction task, ``v`` the forward velocity of the torso over the
step. Actions are clipped to the actuators' range ``[-1, 1]`` before they act; the
observation is Brax's (joint angles without the torso's forward position, then all joint
velocities, 17 numbers). Episodes start from the rest pose without reset noise (the
:class:`~metajax.rl.envs.Environment` protocol's ``reset`` takes no key; the policy's
samples make episodes differ) and last ``horizon`` steps (MAML: 200) of 0.05 s.

Brax is an optional dependency (``pip install "metajax[rl]"``); it is imported when an
environment first steps, with a message saying how to install it if it is missing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from metajax._checks import check_choice, check_positive_int

BACKENDS = ("positional", "spring", "generalized", "mjx")
CONTROL_COST = 0.05  # MAML's half-cheetahs: 0.5 * 1e-1 * sum(action ** 2)


@functools.cache
def _brax_cheetah(backend: str) -> Any:
    """Brax's half-cheetah on ``backend``, without reset noise (built once per backend)."""
    try:
        from brax import envs
    except ImportError as error:
        raise ImportError(
            'the half-cheetah tasks need Brax: pip install "metajax[rl]" (or pip install brax).'
        ) from error
    # Built inside a trace the first time: its arrays must stay concrete, not tracers.
    with jax.ensure_compile_time_eval(), _brax_broadcasting():
        return envs.get_environment("halfcheetah", backend=backend, reset_noise_scale=0.0)


def _brax_broadcasting():
    """Brax's code relies on NumPy rank promotion; allow it there even where a user set it to ``raise``."""
    return jax.numpy_rank_promotion("allow")


@dataclasses.dataclass(frozen=True)
class _HalfCheetah:
    """What both task families share: Brax's cheetah, its sizes, reset and clipped step."""

    horizon: int = 200
    backend: str = "positional"
    observation_size: int = 17
    action_size: int = 6
    task_size: int = 1

    def __post_init__(self):
        check_positive_int("horizon", self.horizon)
        check_choice("backend", self.backend, BACKENDS)

    def reset(self, task: jax.Array) -> tuple[Any, jax.Array]:
        """The cheetah at rest: ``(Brax state, observation [17])``."""
        del task
        with _brax_broadcasting():
            state = _brax_cheetah(self.backend).reset(jax.random.PRNGKey(0))  # no reset noise: the key is unused
        return state, state.obs

    def _move(self, state: Any, action: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        """``(state, observation, forward velocity v [], control cost [])`` after the clipped ``action [6]``."""
        action = jnp.clip(action, -1.0, 1.0)
        with _brax_broadcasting():
            state = _brax_cheetah(self.backend).step(state, action)
        return state, state.obs, state.metrics["x_velocity"], CONTROL_COST * jnp.sum(action**2)


@dataclasses.dataclass(frozen=True)
class HalfCheetahVel(_HalfCheetah):
    """Run at a goal velocity: tasks ``[n, 1]`` uniform in ``[0, max_velocity]``; reward ``-|v - goal| - cost``.

    Example:
        >>> import jax
        >>> HalfCheetahVel(horizon=10).sample_tasks(jax.random.key(0), 3).shape
        (3, 1)
    """

    max_velocity: float = 2.0

    def sample_tasks(self, key: jax.Array, num_tasks: int) -> jax.Array:
        """Goal velocities ``[num_tasks, 1]``, uniform in ``[0, max_velocity]``."""
        return jax.random.uniform(key, (num_tasks, 1), maxval=self.max_velocity)

    def step(self, state: Any, action: jax.Array, task: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """``(state, observation [17], reward [])`` after ``action [6]`` on goal velocity ``task [1]``."""
        state, obs, velocity, cost = self._move(state, action)
        return state, obs, -jnp.abs(velocity - task[0]) - cost


@dataclasses.dataclass(frozen=True)
class HalfCheetahDir(_HalfCheetah):
    """Run forward or backward: tasks ``[n, 1]`` in ``{-1, +1}``; reward ``direction * v - cost``.

    Example:
        >>> import jax
        >>> sorted(set(HalfCheetahDir().sample_tasks(jax.random.key(0), 50)[:, 0].tolist()))
        [-1.0, 1.0]
    """

    def sample_tasks(self, key: jax.Array, num_tasks: int) -> jax.Array:
        """Directions ``[num_tasks, 1]``, ``+1`` or ``-1`` with probability 1/2 each."""
        return jnp.where(jax.random.bernoulli(key, 0.5, (num_tasks, 1)), 1.0, -1.0)

    def step(self, state: Any, action: jax.Array, task: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """``(state, observation [17], reward [])`` after ``action [6]`` in direction ``task [1]``."""
        state, obs, velocity, cost = self._move(state, action)
        return state, obs, task[0] * velocity - cost
