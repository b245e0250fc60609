"""MAML-RL with MAML's trust-region (TRPO) meta-update (Finn et al., 2017), as a :class:`~metajax.learner.MetaUpdater`.

A meta-step samples every task's trajectories once (the inner steps' episodes, then the
adapted policy's, as :class:`~metajax.rl.ProMP` does) and takes one TRPO step (Schulman et
al., 2015) on the meta-parameters ``theta``:

    maximise  L(theta) = mean_tasks mean(pi_adapted(theta) / pi_sampled * A)  on the post-adaptation episodes
    subject to  KL(theta) = mean_tasks mean_states KL(pi_sampled || pi_adapted(theta)) <= max_kl,

where the adapted policy is recomputed from ``theta`` through the inner steps on the stored
episodes (differentiated to second order). The direction solves ``(F + damping I) s = g``
by ``cg_steps`` of conjugate gradient, ``g`` the gradient of ``L`` and ``F`` the Hessian
of ``KL`` at the sampling parameters (Hessian-vector products through the inner steps);
the step ``sqrt(2 max_kl / s'Fs) s`` is the largest the quadratic model of ``KL`` allows,
shrunk by ``backtrack_ratio`` until ``L`` improves and ``KL <= max_kl`` (at most
``backtracks`` times; otherwise the parameters stay). These are rllab's settings, which
MAML's code uses (``max_kl`` 0.01, 10 CG steps, damping 1e-5, ratio 0.8, 15 backtracks).

The outer step is the trust region's, not an Optax transformation's: ``meta_update``
hands the optimizer state back unchanged. Adaptation and evaluation are MAML-RL's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.inner import SecondOrder, conjugate_gradient
from metajax.episode import Episode
from metajax.rl.envs import Environment
from metajax.rl.objectives import ratio_surrogate
from metajax.rl.policy import GaussianMLPPolicy
from metajax.rl.promp import ProMP, Samples

Params = Any


@dataclasses.dataclass(frozen=True)
class MAMLTRPO:
    """MAML-RL meta-trained by trust-region steps (see the module docstring).

    Its episodes are task descriptors (:class:`~metajax.rl.EnvTasks`); its parameters are
    the policy's initial weights, as :class:`~metajax.rl.MAMLRL`'s. :func:`metajax.train`
    calls :meth:`meta_update` for each meta-step; ``loss`` is one task's surrogate
    (value: minus the adapted policy's mean return; gradient: minus ``L``'s).

    Attributes:
        env: an :class:`~metajax.rl.Environment`.
        policy: the policy (default: Gaussian MLP 100-100 tanh).
        episodes: trajectories sampled per task for each inner step and after adaptation.
        inner_lr: step size of the inner policy-gradient SGD.
        inner_steps: inner steps during meta-training (at least 1).
        max_kl: the trust region, the largest mean KL of the adapted policies a step may make (0.01).
        cg_steps: conjugate-gradient iterations for the direction (10).
        damping: added to the KL Hessian in conjugate gradient (1e-5).
        backtrack_ratio: the step's shrink factor per failed line-search trial, in ``(0, 1)`` (0.8).
        backtracks: line-search trials before the step is given up (15).
        discount: discount of the returns to go.
        baseline_reg: ridge coefficient of the linear feature baseline.
        normalize_advantages: standardise each task's advantages.

    Example:
        >>> import jax, optax
        >>> from metajax import rl
        >>> env = rl.Navigation2D(horizon=5)
        >>> learner = MAMLTRPO(env, rl.GaussianMLPPolicy(hidden=(8,)), episodes=2)
        >>> episodes = rl.EnvTasks(env).sample(jax.random.key(0), 2)
        >>> params = learner.init(jax.random.key(1), jax.tree.map(lambda a: a[0], episodes))
        >>> keys = jax.random.split(jax.random.key(2), 2)
        >>> params, _, loss, metrics = learner.meta_update(params, None, episodes, keys, optax.identity())
        >>> sorted(metrics)
        ['kl', 'return', 'step_fraction', 'surrogate_gain']
    """

    env: Environment
    policy: GaussianMLPPolicy = GaussianMLPPolicy()
    episodes: int = 20
    inner_lr: float = 0.1
    inner_steps: int = 1
    max_kl: float = 0.01
    cg_steps: int = 10
    damping: float = 1e-5
    backtrack_ratio: float = 0.8
    backtracks: int = 15
    discount: float = 0.99
    baseline_reg: float = 1e-5
    normalize_advantages: bool = True

    def __post_init__(self):
        self.sampler  # noqa: B018  (ProMP checks the settings they share)
        check_positive("max_kl", self.max_kl)
        check_positive_int("cg_steps", self.cg_steps)
        if not self.damping >= 0:
            raise ValueError(f"damping must be a number >= 0, got {self.damping!r}.")
        if not 0 < self.backtrack_ratio < 1:
            raise ValueError(f"backtrack_ratio must be in (0, 1), got {self.backtrack_ratio!r}.")
        check_positive_int("backtracks", self.backtracks)

    @property
    def sampler(self) -> ProMP:
        """ProMP with these settings: the sampling and the recomputed adaptation on stored episodes."""
        return ProMP(
            self.env,
            self.policy,
            episodes=self.episodes,
            inner_lr=self.inner_lr,
            inner_steps=self.inner_steps,
            discount=self.discount,
            baseline_reg=self.baseline_reg,
            normalize_advantages=self.normalize_advantages,
        )

    def init(self, key: jax.Array, episode: Episode) -> Params:
        """The policy's initial parameters (the episode only names the task)."""
        return self.sampler.maml.init(key, episode)

    def adapted_params(self, params: Params) -> Params:
        """Every policy parameter adapts per task."""
        return params

    def predict(self, adapted: Params, x: jax.Array) -> jax.Array:
        """Mean actions ``[N, A]`` of the adapted policy for observations ``x [N, O]``."""
        return self.sampler.maml.predict(adapted, x)

    def adapt(
        self, params: Params, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> Params:
        """The policy after ``num_steps`` (default ``inner_steps``) policy-gradient steps on task ``support[0][0]``."""
        return self.sampler.maml.adapt(params, support, key, num_steps)

    def evaluate(self, params: Params, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """``{"return": [num_steps + 1]}`` before adaptation and after each inner step, as MAML-RL's."""
        return self.sampler.maml.evaluate(params, episode, key, num_steps)

    def surrogate_and_kl(self, params: Params, pre: Samples, post: Samples) -> tuple[jax.Array, jax.Array]:
        """``(L, KL)`` of one task's samples at meta-parameters ``params`` (see the module docstring)."""
        adapted = self.sampler.adapt_on_samples(params, pre, SecondOrder())[0]
        log_probs = self.sampler.maml.log_probs(adapted, post.trajectories)
        return ratio_surrogate(log_probs, post.log_probs, post.advantages), self.sampler.kl_on_samples(adapted, post)

    def loss(self, params: Params, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """One task's objective: value minus the adapted policy's mean return, gradient minus ``L``'s."""
        pre, post = self.sampler.sample(params, episode.support_x[0], key)
        gain, _ = self.surrogate_and_kl(params, pre, post)
        mean_return = post.trajectories.returns.mean()
        return -mean_return - (gain - jax.lax.stop_gradient(gain)), {"return": mean_return}

    def direction(self, objective, kl, params: Params) -> tuple[Params, Any]:
        """``(s, fisher)``: the CG solution of ``(F + damping I) s = g`` and the product ``v -> (F + damping I) v``.

        ``objective`` and ``kl`` map parameters to scalars; ``g`` is the gradient of
        ``objective`` and ``F`` the Hessian of ``kl``, both at ``params``.
        """
        grad = jax.grad(objective)(params)
        kl_grad = jax.grad(kl)

        def fisher(v):
            hv = jax.jvp(kl_grad, (params,), (v,))[1]
            return jax.tree.map(lambda h, u: h + self.damping * u, hv, v)

        return conjugate_gradient(fisher, grad, self.cg_steps), fisher

    def meta_update(
        self,
        params: Params,
        opt_state: Any,
        episodes: Episode,
        keys: jax.Array,
        optimizer: optax.GradientTransformation,
    ) -> tuple[Params, Any, jax.Array, dict]:
        """``(params, opt_state, loss, metrics)`` after one trust-region step on one sample of the ``[tasks]`` episodes.

        ``opt_state`` and ``optimizer`` are unused (returned as given); ``loss`` is minus the
        mean post-adaptation return; ``metrics`` its ``return``, the accepted step's ``kl``
        and ``surrogate_gain`` (``L`` after minus before), and ``step_fraction``, the share
        of the full step taken (0 when the line search gave up).
        """
        del optimizer
        pre, post = jax.vmap(self.sampler.sample, in_axes=(None, 0, 0))(params, episodes.support_x[:, 0], keys)
        batch = jax.vmap(self.surrogate_and_kl, in_axes=(None, 0, 0))

        def objective(p):
            return batch(p, pre, post)[0].mean()

        def kl(p):
            return batch(p, pre, post)[1].mean()

        step, fisher = self.direction(objective, kl, params)
        curvature = sum(
            jnp.vdot(s, f) for s, f in zip(jax.tree.leaves(step), jax.tree.leaves(fisher(step)), strict=True)
        )
        full = jnp.sqrt(2 * self.max_kl / jnp.maximum(curvature, 1e-12))
        before = objective(params)

        def trial(k):
            fraction = self.backtrack_ratio**k
            candidate = jax.tree.map(lambda p, s: p + fraction * full * s, params, step)
            gain, divergence = batch(candidate, pre, post)
            return candidate, gain.mean() - before, divergence.mean(), fraction

        def rejected(carry):
            k, (_, gain, divergence, _) = carry
            return (k < self.backtracks) & ~((gain > 0) & (divergence <= self.max_kl))

        def next_trial(carry):
            k, _ = carry
            return k + 1, trial(k)

        _, (candidate, gain, divergence, fraction) = jax.lax.while_loop(rejected, next_trial, (1, trial(0)))
        accepted = (gain > 0) & (divergence <= self.max_kl)
        new = jax.tree.map(lambda c, p: jnp.where(accepted, c, p), candidate, params)
        mean_return = post.trajectories.returns.mean()
        metrics = {
            "return": mean_return,
            "kl": jnp.where(accepted, divergence, 0.0),
            "surrogate_gain": jnp.where(accepted, gain, 0.0),
            "step_fraction": jnp.where(accepted, fraction, 0.0),
        }
        return new, opt_state, -mean_return, metrics
