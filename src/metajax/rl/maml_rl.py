"""MAML for reinforcement learning (Finn et al., 2017, section 5.3), as a :class:`~metajax.learner.Learner`.

One task's meta-objective: sample ``episodes`` trajectories with the meta-policy, take
``inner_steps`` policy-gradient steps (REINFORCE with a linear feature baseline fitted on
the task's own trajectories, fresh trajectories at each step), sample trajectories with
the adapted policy and return its policy-gradient surrogate. Everything, the rollouts
included, is traced into the one jitted meta-step of :func:`metajax.train`, ``vmap``-ed
over tasks. The inner loop is metajax's :func:`~metajax.inner_loop`; the meta-gradient
value (``SecondOrder()``, ``FirstOrder()``) says whether the meta-gradient flows through
the inner policy gradient, and ``estimator`` makes that flow carry the right Hessian.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.algorithms.inner import FirstOrder, MetaGradient, SecondOrder, _check_meta_gradient, inner_loop
from metajax.episode import Episode
from metajax.rl.envs import Environment, Trajectories, rollout
from metajax.rl.objectives import ESTIMATORS, advantages, surrogate
from metajax.rl.policy import GaussianMLPPolicy

Params = Any


@dataclasses.dataclass(frozen=True)
class MAMLRL:
    """MAML-RL: the meta-parameters are a policy's initial weights, adapted per task by policy gradient.

    Its episodes are task descriptors (:class:`~metajax.rl.EnvTasks`): ``support_x[0]`` is
    the task. ``loss`` is a surrogate whose value is minus the mean return of the adapted
    policy's episodes and whose gradient is the meta-policy-gradient; ``evaluate`` reports
    the mean ``return`` before adaptation and after each inner step. With
    ``inner_steps=0`` the loss is plain policy gradient on the pre-update episodes, so
    meta-training it trains one policy on all tasks jointly (the "pretrained" baseline of
    MAML's Figure 5).

    Attributes:
        env: an :class:`~metajax.rl.Environment`.
        policy: the policy (default: Gaussian MLP 100-100 tanh).
        episodes: trajectories sampled per task for each policy-gradient step (and after adaptation).
        inner_lr: step size of the inner policy-gradient SGD (MAML: 0.1 on 2D navigation).
        inner_steps: inner steps during meta-training (0: no adaptation).
        estimator: the inner surrogate, ``"dice"``, ``"lvc"`` or ``"vpg"``
            (:mod:`metajax.rl.objectives`); it matters for ``SecondOrder()`` only.
        meta_gradient: ``SecondOrder()`` or ``FirstOrder()``.
        discount: discount of the returns to go.
        baseline_reg: ridge coefficient of the linear feature baseline.
        normalize_advantages: standardise each task's advantages (rllab's and ProMP's default).

    Example:
        >>> import jax, metajax
        >>> from metajax import rl
        >>> env = rl.Navigation2D(horizon=5)
        >>> learner = MAMLRL(env, rl.GaussianMLPPolicy(hidden=(8,)), episodes=2)
        >>> episode = jax.tree.map(lambda a: a[0], rl.EnvTasks(env).sample(jax.random.key(0), 1))
        >>> params = learner.init(jax.random.key(1), episode)
        >>> learner.evaluate(params, episode, jax.random.key(2), num_steps=3)["return"].shape
        (4,)
    """

    env: Environment
    policy: GaussianMLPPolicy = GaussianMLPPolicy()
    episodes: int = 20
    inner_lr: float = 0.1
    inner_steps: int = 1
    estimator: str = "dice"
    meta_gradient: MetaGradient = SecondOrder()
    discount: float = 0.99
    baseline_reg: float = 1e-5
    normalize_advantages: bool = True

    def __post_init__(self):
        check_positive_int("episodes", self.episodes)
        check_positive("inner_lr", self.inner_lr)
        check_positive_int("inner_steps", self.inner_steps, allow_zero=True)
        check_choice("estimator", self.estimator, ESTIMATORS)
        _check_meta_gradient(self.meta_gradient, allowed=(SecondOrder, FirstOrder))
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount!r}.")

    def init(self, key: jax.Array, episode: Episode) -> Params:
        """The policy's initial parameters (the episode only names the task)."""
        del episode
        return self.policy.init(key, self.env.observation_size, self.env.action_size)

    def adapted_params(self, params: Params) -> Params:
        """Every policy parameter adapts per task."""
        return params

    def predict(self, adapted: Params, x: jax.Array) -> jax.Array:
        """Mean actions ``[N, A]`` of the (adapted) policy for observations ``x [N, O]``."""
        return self.policy.mean(adapted, x)

    def adapt(
        self, params: Params, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Params:
        """The policy after ``num_steps`` (default ``inner_steps``) policy-gradient steps on task ``support[0][0]``."""
        return self._inner(params, support[0][0], key, num_steps)[0]

    def loss(self, params: Params, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Minus the adapted policy's mean return, with the meta-policy-gradient as its gradient; ``{"return"}``."""
        task = episode.support_x[0]
        k_inner, k_post = jax.random.split(key)
        adapted = self._inner(params, task, k_inner, None)[0]
        post = rollout(self.env, self.policy, adapted, task, k_post, self.episodes)
        objective = surrogate(self.log_probs(adapted, post), self.advantages(post), "vpg")
        mean_return = post.returns.mean()
        # The value is the cost -return (what the trainer logs and checks); the gradient is the surrogate's.
        return -mean_return - (objective - jax.lax.stop_gradient(objective)), {"return": mean_return}

    def evaluate(self, params: Params, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """``{"return": [num_steps + 1]}``: the mean return before adaptation and after each inner step.

        Each return is measured on ``episodes`` fresh episodes of the policy at that step.
        """
        task = episode.support_x[0]
        k_adapt, k_measure = jax.random.split(key)
        _, policies = self._inner(jax.lax.stop_gradient(params), task, k_adapt, num_steps, track=lambda p: p)
        keys = jax.random.split(k_measure, jax.tree.leaves(policies)[0].shape[0])
        measure = lambda p, k: rollout(self.env, self.policy, p, task, k, self.episodes).returns.mean()
        return {"return": jax.vmap(measure)(policies, keys)}

    def inner_objective(self, params: Params, task: jax.Array, key: jax.Array) -> jax.Array:
        """The inner loss on ``task``: minus the ``estimator`` surrogate on ``episodes`` new episodes of ``params``."""
        trajectories = rollout(self.env, self.policy, params, task, key, self.episodes)
        return -surrogate(self.log_probs(params, trajectories), self.advantages(trajectories), self.estimator)

    def _inner(self, params, task, key, num_steps, track=None):
        steps = self.inner_steps if num_steps is None else num_steps
        check_positive_int("num_steps", steps, allow_zero=True)
        loss_fn = lambda p, k: (self.inner_objective(p, task, k), None)
        keys = jax.random.split(key, steps)  # fresh episodes at every step
        meta_gradient = self.meta_gradient if track is None else FirstOrder()  # evaluation differentiates nothing
        return inner_loop(
            loss_fn, params, keys, optax.sgd(self.inner_lr), steps, meta_gradient, per_step=True, track=track
        )

    def log_probs(self, params: Params, trajectories: Trajectories) -> jax.Array:
        """The policy's log-likelihood ``[E, T]`` of the actions of ``trajectories`` (``[E, T, ...]``)."""
        return self.policy.log_prob(params, trajectories.observations, trajectories.actions)

    def advantages(self, trajectories: Trajectories) -> jax.Array:
        """Advantages ``[E, T]`` of ``trajectories``: returns to go minus the task's linear baseline (a constant)."""
        return advantages(
            trajectories.observations,
            trajectories.rewards,
            self.discount,
            reg=self.baseline_reg,
            normalize=self.normalize_advantages,
        )
