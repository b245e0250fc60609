"""Gaussian MLP policies: a network gives the mean action, a learned log-std the spread."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax.algorithms.inner import apply_model
from metajax.models import MLP

Params = Any


@dataclasses.dataclass(frozen=True)
class GaussianMLPPolicy:
    """A diagonal Gaussian over actions: mean ``MLP(obs)``, state-independent learned ``log_std``.

    The default is MAML-RL's policy (Finn et al., 2017): two hidden layers of 100 units with
    tanh (rllab's ``GaussianMLPPolicy``), initial standard deviation 1.

    Attributes:
        hidden: widths of the hidden layers (``()``: a linear policy).
        init_log_std: initial log standard deviation of every action coordinate.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> policy = GaussianMLPPolicy(hidden=(8,))
        >>> params = policy.init(jax.random.key(0), observation_size=2, action_size=2)
        >>> policy.sample(params, jnp.zeros(2), jax.random.key(1)).shape
        (2,)
        >>> policy.log_prob(params, jnp.zeros((5, 2)), jnp.zeros((5, 2))).shape
        (5,)
    """

    hidden: tuple[int, ...] = (100, 100)
    init_log_std: float = 0.0

    def _net(self, action_size: int) -> nn.Module:
        return MLP(hidden=self.hidden, out=action_size, activation=nn.tanh)

    def init(self, key: jax.Array, observation_size: int, action_size: int) -> Params:
        """``{"mean": network parameters, "log_std": [action_size]}``."""
        net = self._net(action_size).init(key, jnp.zeros((1, observation_size)))["params"]
        return {"mean": net, "log_std": jnp.full((action_size,), self.init_log_std, jnp.float32)}

    def mean(self, params: Params, obs: jax.Array) -> jax.Array:
        """Mean actions ``[..., A]`` for observations ``obs [..., O]``."""
        return apply_model(self._net(params["log_std"].shape[0]), params["mean"], obs)

    def log_prob(self, params: Params, obs: jax.Array, actions: jax.Array) -> jax.Array:
        """Log-density ``[...]`` of ``actions [..., A]`` given ``obs [..., O]``."""
        log_std = jnp.broadcast_to(params["log_std"], actions.shape)
        z = (actions - self.mean(params, obs)) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def sample(self, params: Params, obs: jax.Array, key: jax.Array) -> jax.Array:
        """One action ``[A]`` for an observation ``obs [O]``."""
        log_std = params["log_std"]
        return self.mean(params, obs) + jnp.exp(log_std) * jax.random.normal(key, log_std.shape, log_std.dtype)
