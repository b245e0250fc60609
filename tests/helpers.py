"""Small shared pieces for the tests."""

from __future__ import annotations

import flax.linen as nn
import jax

import metajax
from metajax import algorithms, models


def one_task(task, seed: int = 0):
    """An unbatched episode of ``task``."""
    return jax.tree.map(lambda a: a[0], task.sample(jax.random.key(seed), 1))


def regression_learners(hidden=(16,), inner_steps: int = 2, inner_lr: float = 0.05) -> dict:
    """Every gradient-based learner, configured for 1-D regression."""
    mlp = models.MLP(hidden=hidden, out=1)
    common = dict(inner_lr=inner_lr, inner_steps=inner_steps)
    return {
        "maml": metajax.MAML(mlp, **common),
        "fomaml": metajax.MAML(mlp, meta_gradient=metajax.FirstOrder(), **common),
        "imaml": metajax.MAML(mlp, meta_gradient=metajax.Implicit(prox=2.0, cg_steps=3), **common),
        "reptile": metajax.Reptile(mlp, **common),
        "metasgd": metajax.MetaSGD(mlp, **common),
        "anil": algorithms.ANIL(models.MLP(hidden=hidden, out=None), nn.Dense(1), **common),
    }
