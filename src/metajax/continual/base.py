"""The online-learner contract of the continual package, and helpers the learners share.

An online learner is a frozen dataclass with pure methods:

* ``init_state(key, x, y) -> state``: a pytree (parameters, optimizer state, buffers),
  shaped by one example batch ``x [B, ...]``, ``y [B, ...]``;
* ``update(state, batch, key) -> (state, metrics)``: learn from one incoming
  :class:`StreamBatch` (it may read ``batch.switched``, the task-switch flag);
* ``predict(state, x) -> outputs``;
* the attribute ``objective``: ``(predictions, targets) -> (loss, metrics)``.

The drivers in :mod:`metajax.continual.protocol` run ``update`` as a ``lax.scan`` over a
stream inside one ``jit``: nothing runs in Python per example or per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class StreamBatch(NamedTuple):
    """One step of a stream.

    Attributes:
        x: ``[B, *feature_shape]`` inputs.
        y: ``[B, *label_shape]`` targets.
        task: int32 scalar, the task the step belongs to (learners may ignore it).
        switched: bool scalar, ``True`` on the first step of a new task segment.
    """

    x: jax.Array
    y: jax.Array
    task: jax.Array
    switched: jax.Array


def apply_model(model, params: Any, x: jax.Array) -> jax.Array:
    """``model.apply({"params": params}, x)``."""
    return model.apply({"params": params}, x)


def mixed_loss(objective: Callable, predict: Callable, params: Any, x, y, replay_x, replay_y, replay_mask):
    """Objective on the incoming examples plus replayed ones, weighted by count; replay ignored while masked off.

    ``replay_mask`` is all-or-nothing (a :class:`ReplayBuffer` is empty or not), so the
    mean over the union is ``(B * L_in + R * m * L_replay) / (B + R * m)``.
    """
    loss_in, metrics = objective(predict(params, x), y)
    loss_re, _ = objective(predict(params, replay_x), replay_y)
    m = replay_mask.any().astype(loss_in.dtype)
    b, r = x.shape[0], replay_x.shape[0]
    return (b * loss_in + r * m * loss_re) / (b + r * m), metrics


def sgd(params: Any, grads: Any, lr) -> Any:
    """``params - lr * grads`` (``lr`` a scalar or a pytree of per-parameter rates)."""
    if isinstance(lr, int | float) or (hasattr(lr, "ndim") and lr.ndim == 0):
        return jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return jax.tree.map(lambda p, g, a: p - a * g, params, grads, lr)


def tree_lerp(start: Any, end: Any, weight) -> Any:
    """``start + weight * (end - start)`` leafwise (Reptile's interpolation)."""
    return jax.tree.map(lambda a, b: a + weight * (b - a), start, end)


def one_example(x: jax.Array, i) -> jax.Array:
    """Row ``i`` of ``x`` with its batch axis kept: ``[1, ...]``."""
    return jax.lax.dynamic_slice_in_dim(x, i, 1, axis=0)


def zeros_like_tree(tree: Any) -> Any:
    """Zeros with the structure and dtypes of ``tree``."""
    return jax.tree.map(jnp.zeros_like, tree)
