"""Helpers the online learners share (their contract is :class:`metajax.learner.OnlineLearner`).

The drivers in :mod:`metajax.continual.protocol` run ``update`` as a ``lax.scan`` over a
stream inside one ``jit``: nothing runs in Python per example or per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from metajax import losses
from metajax.algorithms.inner import apply_model as apply_model  # the online learners import it from here


def mixed_loss(objective: Callable | None, predict: Callable, params: Any, x, y, replay_x, replay_y, replay_mask):
    """Objective on the incoming examples plus replayed ones, weighted by count; replay ignored while masked off.

    ``replay_mask`` is all-or-nothing (a :class:`ReplayBuffer` is empty or not), so the
    mean over the union is ``(B * L_in + R * m * L_replay) / (B + R * m)``.
    """
    objective = losses.resolve(objective, y)
    loss_in, metrics = objective(predict(params, x), y)
    loss_re, _ = objective(predict(params, replay_x), replay_y)
    m = replay_mask.any().astype(loss_in.dtype)
    b, r = x.shape[0], replay_x.shape[0]
    return (b * loss_in + r * m * loss_re) / (b + r * m), metrics


def tree_lerp(start: Any, end: Any, weight) -> Any:
    """``start + weight * (end - start)`` leafwise (Reptile's interpolation)."""
    return jax.tree.map(lambda a, b: a + weight * (b - a), start, end)
