"""Policy-gradient objectives: discounted returns, the linear feature baseline, advantages, surrogates.

A surrogate is a scalar whose gradient is a policy-gradient estimate; how it is written
decides its Hessian, which the second-order meta-gradient of MAML-RL differentiates
through the inner step (``estimator``):

* ``"vpg"``: ``mean(log pi * A)``, REINFORCE as written in MAML's code. Its gradient is
  the policy gradient; its Hessian ``mean(hess log pi * A)`` lacks the terms from the
  dependence of the sampling distribution on the parameters.
* ``"lvc"``: ``mean(pi / stop_gradient(pi) * A)`` per time step, ProMP's low-variance
  curvature estimator (Rothfuss et al., 2019): the same gradient; its Hessian adds
  ``grad log pi grad log pi^T A`` of each step, but not the cross terms between steps.
* ``"dice"``: ``mean((magic(sum_{t'<=t} log pi) - magic(sum_{t'<t} log pi)) * A_t)`` with
  ``magic(x) = exp(x - stop_gradient(x))`` (DiCE, Foerster et al., 2018, with the baseline
  of Mao et al., 2019): every derivative is an unbiased estimate of that of the expected
  return, so its Hessian is the exact one in expectation.

ProMP's outer objective (:func:`clipped_surrogate`) clips the likelihood ratio of the
post-adaptation trajectories as PPO does, and penalises the inner step's KL divergence
(:func:`gaussian_kl`).

Every surrogate is *maximised* (it estimates the return); the arrays are one task's
episodes ``[E, T]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metajax._checks import check_choice

ESTIMATORS = ("vpg", "lvc", "dice")


def discounted_returns(rewards: jax.Array, discount: float) -> jax.Array:
    """Returns to go ``sum_{t' >= t} discount^(t'-t) r_t'``, ``[E, T]`` from rewards ``[E, T]``.

    Example:
        >>> import jax.numpy as jnp
        >>> discounted_returns(jnp.array([[1.0, 1.0, 1.0]]), 0.5).tolist()
        [[1.75, 1.5, 1.0]]
    """

    def back(later, r):
        now = r + discount * later
        return now, now

    _, out = jax.lax.scan(back, jnp.zeros(rewards.shape[0], rewards.dtype), rewards.T, reverse=True)
    return out.T


def baseline_features(observations: jax.Array) -> jax.Array:
    """rllab's linear-baseline features ``[E, T, 2 O + 4]``: obs, obs^2, t, t^2, t^3 (t = step / 100), 1.

    Observations are clipped to ``[-10, 10]`` first, as in rllab's ``LinearFeatureBaseline``
    (and ProMP's), which MAML-RL uses.
    """
    o = jnp.clip(observations, -10.0, 10.0)
    e, t = observations.shape[:2]
    time = jnp.broadcast_to((jnp.arange(t, dtype=o.dtype) / 100.0)[None, :, None], (e, t, 1))
    return jnp.concatenate([o, o**2, time, time**2, time**3, jnp.ones_like(time)], axis=-1)


def linear_baseline(observations: jax.Array, returns: jax.Array, reg: float = 1e-5) -> jax.Array:
    """Values ``[E, T]`` of the ridge least-squares fit of ``returns [E, T]`` on :func:`baseline_features`.

    Fitted per task on its own episodes, as MAML-RL does before each policy-gradient step;
    ``reg`` is the ridge coefficient (rllab's ``reg_coeff``).
    """
    x = baseline_features(observations)
    flat, y = x.reshape(-1, x.shape[-1]), returns.reshape(-1)
    gram = flat.T @ flat + reg * jnp.eye(flat.shape[-1], dtype=flat.dtype)
    return x @ jnp.linalg.solve(gram, flat.T @ y)


def advantages(
    observations: jax.Array, rewards: jax.Array, discount: float, *, reg: float = 1e-5, normalize: bool = True
) -> jax.Array:
    """Advantages ``[E, T]``: returns to go minus the linear baseline, standardised when ``normalize``.

    A constant (``stop_gradient``): estimators differentiate only the log-likelihoods.
    """
    returns = discounted_returns(rewards, discount)
    adv = returns - linear_baseline(observations, returns, reg)
    if normalize:  # as rllab's and ProMP's samplers do (center_adv / normalize_adv)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return jax.lax.stop_gradient(adv)


def magic(x: jax.Array) -> jax.Array:
    """DiCE's MagicBox ``exp(x - stop_gradient(x))``: value 1, derivative ``magic(x) * dx``."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def surrogate(log_probs: jax.Array, adv: jax.Array, estimator: str = "dice") -> jax.Array:
    """The policy-gradient surrogate (to maximise) of ``log_probs [E, T]`` and advantages ``[E, T]``.

    ``estimator`` is ``"vpg"``, ``"lvc"`` or ``"dice"`` (the module docstring says how their
    Hessians differ; their gradients are the same).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> grad = lambda e: jax.grad(lambda lp: surrogate(lp, jnp.ones((1, 2)), e))(jnp.zeros((1, 2)))
        >>> [grad(e).tolist() for e in ESTIMATORS]
        [[[0.5, 0.5]], [[0.5, 0.5]], [[0.5, 0.5]]]
    """
    check_choice("estimator", estimator, ESTIMATORS)
    if estimator == "vpg":
        return jnp.mean(log_probs * adv)
    if estimator == "lvc":  # the likelihood ratio to the sampling policy, which is the current one
        return ratio_surrogate(log_probs, jax.lax.stop_gradient(log_probs), adv)
    upto = jnp.cumsum(log_probs, axis=-1)
    return jnp.mean((magic(upto) - magic(upto - log_probs)) * adv)


def ratio_surrogate(log_probs: jax.Array, old_log_probs: jax.Array, adv: jax.Array) -> jax.Array:
    """``mean(pi / pi_old * A)`` of ``log_probs``, the sampling policy's ``old_log_probs`` and ``adv``, all ``[E, T]``.

    ProMP's inner objective: importance-weighted policy gradient on episodes of ``pi_old``.
    Where the policy is still the sampling one, it is the ``"lvc"`` estimator.
    """
    return jnp.mean(jnp.exp(log_probs - old_log_probs) * adv)


def clipped_surrogate(log_probs: jax.Array, old_log_probs: jax.Array, adv: jax.Array, clip_eps: float) -> jax.Array:
    """PPO's clipped surrogate ``mean(min(r A, clip(r, 1 - eps, 1 + eps) A))``, ``r = pi / pi_old``; arrays ``[E, T]``.

    Example:
        >>> import jax.numpy as jnp
        >>> lp, old = jnp.log(jnp.array([[1.5, 0.5]])), jnp.zeros((1, 2))
        >>> round(float(clipped_surrogate(lp, old, jnp.array([[1.0, 1.0]]), 0.2)), 4)  # (1.2 + 0.5) / 2
        0.85
    """
    ratio = jnp.exp(log_probs - old_log_probs)
    return jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv))


def gaussian_kl(mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array) -> jax.Array:
    """``KL(p || q)`` of diagonal Gaussians summed over the last axis: means ``[..., A]``, log-stds ``[A]`` or alike.

    Example:
        >>> import jax.numpy as jnp
        >>> float(gaussian_kl(jnp.zeros(1), jnp.zeros(1), jnp.ones(1), jnp.zeros(1)))  # (0 - 1)^2 / 2
        0.5
    """
    log_std_p, log_std_q = (jnp.broadcast_to(s, mean_p.shape) for s in (log_std_p, log_std_q))
    var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
    per_dim = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5
    return jnp.sum(per_dim, axis=-1)
