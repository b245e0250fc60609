"""Meta-reinforcement learning: JAX environments (navigation, Brax half-cheetahs) as task distributions, policy-gradient
objectives, MAML-RL, ProMP."""

from metajax.rl import objectives, registry
from metajax.rl.envs import Environment, EnvTasks, Navigation2D, PointState, Trajectories, rollout
from metajax.rl.locomotion import HalfCheetahDir, HalfCheetahVel
from metajax.rl.maml_rl import MAMLRL
from metajax.rl.policy import GaussianMLPPolicy
from metajax.rl.promp import ProMP
from metajax.rl.trpo import MAMLTRPO

__all__ = [
    "MAMLRL",
    "MAMLTRPO",
    "EnvTasks",
    "Environment",
    "GaussianMLPPolicy",
    "HalfCheetahDir",
    "HalfCheetahVel",
    "Navigation2D",
    "PointState",
    "ProMP",
    "Trajectories",
    "objectives",
    "registry",
    "rollout",
]
