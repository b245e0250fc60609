"""The RL learners by name, what ``metajax train --task nav2d --algo NAME`` builds.

Kept apart from :mod:`metajax.learner`'s registry: that one builds learners from a
:class:`~metajax.learner.Spec` (a supervised task kind, its outputs and a network), and its
contract suite runs them on supervised episodes; an RL learner is built from an
environment and a policy, and is tested by ``tests/rl``.

* ``"maml-rl"``: :class:`~metajax.rl.MAMLRL` (DiCE inner estimator, second order unless
  ``first_order``);
* ``"promp"``: :class:`~metajax.rl.ProMP` (LVC inner step, PPO-clipped outer objective
  with the adaptive inner-KL penalty, ``outer_steps`` optimizer steps per sample);
* ``"maml-trpo"``: :class:`~metajax.rl.MAMLTRPO` (MAML-RL's adaptation, the paper's TRPO
  meta-update: one trust-region step of mean KL ``max_kl`` per sampled batch);
* ``"pretrained"``: one policy trained by policy gradient on all tasks jointly
  (``MAMLRL`` with ``inner_steps=0``), fine-tuned with the same inner steps at test time;
* ``"random"``: the same learner left at its random initialisation (not meta-trained),
  fine-tuned at test time. These two are MAML's Figure 5 baselines.
"""

from __future__ import annotations

from typing import Any

from metajax.algorithms.inner import FirstOrder, SecondOrder
from metajax.rl.maml_rl import MAMLRL
from metajax.rl.policy import GaussianMLPPolicy
from metajax.rl.promp import ProMP
from metajax.rl.trpo import MAMLTRPO

NAMES = ("maml-rl", "maml-trpo", "promp", "pretrained", "random")
UNTRAINED = ("random",)  # evaluated at initialisation: no meta-training


def build(
    name: str,
    env: Any,
    *,
    policy: GaussianMLPPolicy | None = None,
    episodes: int = 20,
    inner_lr: float = 0.1,
    inner_steps: int = 1,
    estimator: str = "dice",
    first_order: bool = False,
    outer_steps: int = 5,
    clip_eps: float = 0.2,
    max_kl: float = 0.01,
) -> MAMLRL | MAMLTRPO | ProMP:
    """The RL learner ``name`` on ``env`` (see the module docstring); ``KeyError`` names the known ones.

    ``inner_steps`` are those of meta-training (the baselines train with none);
    ``estimator`` and ``first_order`` set MAML-RL's meta-gradient, ``outer_steps`` and
    ``clip_eps`` ProMP's outer optimisation, ``max_kl`` MAML-TRPO's trust region; ``policy=None`` is the default
    :class:`~metajax.rl.GaussianMLPPolicy` (100-100 tanh).
    """
    if name not in NAMES:
        raise KeyError(f"no RL learner named {name!r}; known: {', '.join(NAMES)}.")
    policy = GaussianMLPPolicy() if policy is None else policy
    if name == "promp":
        return ProMP(
            env,
            policy,
            episodes=episodes,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            outer_steps=outer_steps,
            clip_eps=clip_eps,
        )
    if name == "maml-trpo":
        return MAMLTRPO(env, policy, episodes=episodes, inner_lr=inner_lr, inner_steps=inner_steps, max_kl=max_kl)
    maml = name == "maml-rl"
    return MAMLRL(
        env,
        policy,
        episodes=episodes,
        inner_lr=inner_lr,
        inner_steps=inner_steps if maml else 0,
        estimator=estimator,
        meta_gradient=FirstOrder() if first_order else SecondOrder(),
    )
