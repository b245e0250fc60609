"""ProMP, Proximal Meta-Policy Search (Rothfuss et al., 2019), as a :class:`~metajax.learner.MetaUpdater`.

A meta-step samples every task's trajectories once: ``inner_steps`` policy-gradient steps
on fresh episodes (the inner objective is the likelihood ratio to the sampling policy
times the advantage, the low-variance curvature estimator where the policy is the sampling
one), then episodes of the adapted policy. It then takes ``outer_steps`` optimizer steps
on those samples, all inside the one compiled meta-step (an ``optimize`` scan), each on

    - mean_tasks clipped_surrogate(pi_adapted / pi_sampled on the post-adaptation episodes)
      + mean_steps(kl_coeff_i * KL(pi_sampled_i || pi_i) on step i's episodes),

where the adapted policy is recomputed from the current meta-parameters through the inner
steps on the stored episodes (differentiated to second order). After the steps, each inner
step's KL coefficient is halved when its KL fell below ``target_inner_kl / 1.5`` and
doubled when it rose above ``1.5 target_inner_kl``, as the reference implementation does.
At the first outer step the ratios are 1, so the gradient is MAML-RL's with the LVC
estimator (and the KL terms, at their minimum, add none).

The KL coefficients are state the next meta-step reads, so they travel with the
meta-parameters (``params["inner_kl_coeff"]``, no gradient) and are checkpointed with them.
Adaptation and evaluation are MAML-RL's (:attr:`ProMP.maml`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from metajax._checks import check_non_negative, check_positive, check_positive_int
from metajax.algorithms.inner import FirstOrder, MetaGradient, SecondOrder, inner_loop, optimize
from metajax.episode import Episode
from metajax.rl.envs import Environment, Trajectories, rollout
from metajax.rl.maml_rl import MAMLRL
from metajax.rl.objectives import clipped_surrogate, gaussian_kl, ratio_surrogate
from metajax.rl.policy import GaussianMLPPolicy

Params = Any


class Samples(struct.PyTreeNode):
    """One policy's episodes of a task and what the objectives need of that (sampling) policy.

    Attributes:
        trajectories: :class:`~metajax.rl.Trajectories` ``[E, T, ...]``.
        advantages: ``[E, T]``, a constant.
        log_probs: the sampling policy's log-likelihood of the actions, ``[E, T]``.
        means: its mean actions ``[E, T, A]``.
        log_std: its log standard deviation ``[A]``.
    """

    trajectories: Trajectories
    advantages: jax.Array
    log_probs: jax.Array
    means: jax.Array
    log_std: jax.Array


def adapt_kl_coeff(coeff: jax.Array, kl: jax.Array, target: float) -> jax.Array:
    """ProMP's rule per inner step: ``coeff / 2`` where ``kl < target / 1.5``, ``2 coeff`` where ``kl > 1.5 target``.

    Example:
        >>> import jax.numpy as jnp
        >>> adapt_kl_coeff(jnp.array([1.0, 1.0, 1.0]), jnp.array([0.001, 0.01, 0.1]), 0.01).tolist()
        [0.5, 1.0, 2.0]
    """
    return jnp.where(kl < target / 1.5, coeff / 2, jnp.where(kl > target * 1.5, coeff * 2, coeff))


@dataclasses.dataclass(frozen=True)
class ProMP:
    """ProMP (see the module docstring): MAML-RL's adaptation, a PPO-clipped outer objective with an inner-KL penalty.

    Its episodes are task descriptors (:class:`~metajax.rl.EnvTasks`); its parameters are
    ``{"policy": the policy's initial weights, "inner_kl_coeff": [inner_steps]}``.
    :func:`metajax.train` calls :meth:`meta_update` for each meta-step; ``loss`` is one
    task's first outer step (value: minus the adapted policy's mean return).

    Attributes:
        env: an :class:`~metajax.rl.Environment`.
        policy: the policy (default: Gaussian MLP 100-100 tanh).
        episodes: trajectories sampled per task for each inner step and after adaptation.
        inner_lr: step size of the inner policy-gradient SGD.
        inner_steps: inner steps during meta-training (at least 1).
        outer_steps: optimizer steps on each sampled batch (the reference's ``num_ppo_steps``, 5).
        clip_eps: PPO clip range of the likelihood ratio, in ``(0, 1)`` (0.2).
        init_inner_kl_coeff: initial KL coefficient of every inner step (0.01); 0 and
            ``adaptive_kl=False`` drop the penalty.
        target_inner_kl: the KL the adaptive rule steers each inner step to (0.01).
        adaptive_kl: adapt the coefficients after each meta-step (else they stay fixed).
        discount: discount of the returns to go.
        baseline_reg: ridge coefficient of the linear feature baseline.
        normalize_advantages: standardise each task's advantages.

    Example:
        >>> import jax, optax
        >>> from metajax import rl
        >>> env = rl.Navigation2D(horizon=5)
        >>> learner = ProMP(env, rl.GaussianMLPPolicy(hidden=(8,)), episodes=2, outer_steps=3)
        >>> episodes = rl.EnvTasks(env).sample(jax.random.key(0), 2)
        >>> params = learner.init(jax.random.key(1), jax.tree.map(lambda a: a[0], episodes))
        >>> optimizer = optax.adam(1e-3)
        >>> keys = jax.random.split(jax.random.key(2), 2)
        >>> params, _, loss, metrics = learner.meta_update(params, optimizer.init(params), episodes, keys, optimizer)
        >>> sorted(metrics), params["inner_kl_coeff"].shape
        (['inner_kl', 'inner_kl_coeff', 'return'], (1,))
    """

    env: Environment
    policy: GaussianMLPPolicy = GaussianMLPPolicy()
    episodes: int = 20
    inner_lr: float = 0.1
    inner_steps: int = 1
    outer_steps: int = 5
    clip_eps: float = 0.2
    init_inner_kl_coeff: float = 0.01
    target_inner_kl: float = 0.01
    adaptive_kl: bool = True
    discount: float = 0.99
    baseline_reg: float = 1e-5
    normalize_advantages: bool = True

    def __post_init__(self):
        check_positive_int("inner_steps", self.inner_steps)
        self.maml  # noqa: B018  (MAML-RL checks the settings they share)
        check_positive_int("outer_steps", self.outer_steps)
        if isinstance(self.clip_eps, bool) or not isinstance(self.clip_eps, int | float) or not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be a number in (0, 1) (PPO's clip range), got {self.clip_eps!r}.")
        check_non_negative("init_inner_kl_coeff", self.init_inner_kl_coeff)
        check_positive("target_inner_kl", self.target_inner_kl)

    @property
    def maml(self) -> MAMLRL:
        """MAML-RL with these settings and the LVC estimator: ProMP's adaptation, evaluation, first outer gradient."""
        return MAMLRL(
            self.env,
            self.policy,
            episodes=self.episodes,
            inner_lr=self.inner_lr,
            inner_steps=self.inner_steps,
            estimator="lvc",
            meta_gradient=SecondOrder(),
            discount=self.discount,
            baseline_reg=self.baseline_reg,
            normalize_advantages=self.normalize_advantages,
        )

    def init(self, key: jax.Array, episode: Episode) -> Params:
        """``{"policy": initial weights, "inner_kl_coeff": [inner_steps] of init_inner_kl_coeff}``."""
        coeff = jnp.full((self.inner_steps,), self.init_inner_kl_coeff, jnp.float32)
        return {"policy": self.maml.init(key, episode), "inner_kl_coeff": coeff}

    def adapted_params(self, params: Params) -> Params:
        """The policy adapts per task; the KL coefficients do not."""
        return params["policy"]

    def predict(self, adapted: Params, x: jax.Array) -> jax.Array:
        """Mean actions ``[N, A]`` of the adapted policy for observations ``x [N, O]``."""
        return self.maml.predict(adapted, x)

    def adapt(
        self, params: Params, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Params:
        """The policy after ``num_steps`` (default ``inner_steps``) policy-gradient steps on task ``support[0][0]``."""
        return self.maml.adapt(params["policy"], support, key, num_steps)

    def evaluate(self, params: Params, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """``{"return": [num_steps + 1]}`` before adaptation and after each inner step, as MAML-RL's."""
        return self.maml.evaluate(params["policy"], episode, key, num_steps)

    def sample(self, policy: Params, task: jax.Array, key: jax.Array) -> tuple[Samples, Samples]:
        """``(pre [inner_steps, E, T, ...], post [E, T, ...])``: each inner step's episodes, then the adapted policy's.

        The same key gives the episodes :meth:`MAMLRL.loss` samples with the same key.
        """
        k_inner, k_post = jax.random.split(key)

        def step(p, k):
            samples = self._samples(p, rollout(self.env, self.policy, p, task, k, self.episodes))
            return self.adapt_on_samples(p, jax.tree.map(lambda a: a[None], samples), FirstOrder())[0], samples

        adapted, pre = jax.lax.scan(step, jax.lax.stop_gradient(policy), jax.random.split(k_inner, self.inner_steps))
        return pre, self._samples(adapted, rollout(self.env, self.policy, adapted, task, k_post, self.episodes))

    def outer_cost(
        self, policy: Params, inner_kl_coeff: jax.Array, pre: Samples, post: Samples
    ) -> tuple[jax.Array, jax.Array]:
        """``(cost, inner KLs [inner_steps])`` of one task's samples: minus the clipped surrogate plus the KL penalty.

        The policy is adapted from ``policy`` through the inner steps on ``pre`` (second
        order); ``inner_kl_coeff`` is a constant.
        """
        adapted, policies = self.adapt_on_samples(policy, pre, SecondOrder(), track=lambda p: p)
        before = jax.tree.map(lambda a: a[:-1], policies)  # the policy at each inner step
        kls = jax.vmap(self.kl_on_samples)(before, pre)
        surrogate = clipped_surrogate(
            self.maml.log_probs(adapted, post.trajectories), post.log_probs, post.advantages, self.clip_eps
        )
        return -surrogate + jnp.mean(jax.lax.stop_gradient(inner_kl_coeff) * kls), kls

    def loss(self, params: Params, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """One task's first outer step: value minus the adapted policy's mean return, gradient the outer cost's."""
        pre, post = self.sample(params["policy"], episode.support_x[0], key)
        cost, _ = self.outer_cost(params["policy"], params["inner_kl_coeff"], pre, post)
        mean_return = post.trajectories.returns.mean()
        return -mean_return + (cost - jax.lax.stop_gradient(cost)), {"return": mean_return}

    def meta_update(
        self,
        params: Params,
        opt_state: optax.OptState,
        episodes: Episode,
        keys: jax.Array,
        optimizer: optax.GradientTransformation,
    ) -> tuple[Params, optax.OptState, jax.Array, dict]:
        """``(params, opt_state, loss, metrics)``: ``outer_steps`` updates on one sample of the ``[tasks]`` episodes.

        ``keys [tasks]`` draw each task's episodes; ``loss`` is minus the mean
        post-adaptation return, ``metrics`` its ``return``, the mean ``inner_kl`` after the
        updates and the mean new ``inner_kl_coeff``.
        """
        pre, post = jax.vmap(self.sample, in_axes=(None, 0, 0))(params["policy"], episodes.support_x[:, 0], keys)
        coeff = params["inner_kl_coeff"]
        batch_cost = jax.vmap(self.outer_cost, in_axes=(None, None, 0, 0))
        mean_cost = lambda p, _: (batch_cost(p["policy"], coeff, pre, post)[0].mean(), None)
        params, opt_state, _ = optimize(mean_cost, params, opt_state, optimizer, num_steps=self.outer_steps)
        kls = batch_cost(params["policy"], coeff, pre, post)[1].mean(0)
        if self.adaptive_kl:
            coeff = adapt_kl_coeff(coeff, kls, self.target_inner_kl)
        mean_return = post.trajectories.returns.mean()
        metrics = {"return": mean_return, "inner_kl": kls.mean(), "inner_kl_coeff": coeff.mean()}
        return {**params, "inner_kl_coeff": coeff}, opt_state, -mean_return, metrics

    def _samples(self, params: Params, trajectories: Trajectories) -> Samples:
        means = self.policy.mean(params, trajectories.observations)
        log_probs = self.maml.log_probs(params, trajectories)
        return Samples(trajectories, self.maml.advantages(trajectories), log_probs, means, params["log_std"])

    def adapt_on_samples(self, params: Params, pre: Samples, meta_gradient: MetaGradient, track=None):
        """The inner steps on the stored episodes ``pre [steps, ...]``, one per step (``inner_loop``'s result)."""

        def loss(p, samples):
            log_probs = self.maml.log_probs(p, samples.trajectories)
            return -ratio_surrogate(log_probs, samples.log_probs, samples.advantages), None

        return inner_loop(loss, params, pre, optax.sgd(self.inner_lr), None, meta_gradient, per_step=True, track=track)

    def kl_on_samples(self, params: Params, samples: Samples) -> jax.Array:
        """Mean ``KL(sampling policy || policy of params)`` over the states of ``samples``."""
        means = self.policy.mean(params, samples.trajectories.observations)
        return jnp.mean(gaussian_kl(samples.means, samples.log_std, means, params["log_std"]))
