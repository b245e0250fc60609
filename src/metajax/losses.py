"""Task objectives: ``objective(predictions, targets) -> (loss, metrics)``.

Every learner takes its objective as a value, so regression and classification share
one code path; ``objective=None`` follows the task: cross-entropy for integer labels, MSE
for real-valued targets. Metrics are scalars whose names the evaluation reports. A
mismatch (class labels given to ``mse``, ``[Q, ways]`` logits against ``[Q]`` targets) is
refused when the loss is traced, instead of broadcasting into a meaningless loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def mse(predictions: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean squared error for regression.

    Args:
        predictions: ``[examples, D]``.
        targets: ``[examples, D]``.

    Returns:
        ``(loss, {"mse": loss})``.
    """
    if jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(
            f"mse needs real-valued targets, got {targets.dtype} targets (class labels?); "
            "use metajax.losses.cross_entropy for classification."
        )
    if predictions.shape != targets.shape:
        raise ValueError(
            f"mse needs predictions and targets of one shape, got {tuple(predictions.shape)} and "
            f"{tuple(targets.shape)}; check the model's output size against the task's targets."
        )
    loss = jnp.mean(jnp.square(predictions - targets))
    return loss, {"mse": loss}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Softmax cross-entropy for classification with integer labels.

    Args:
        logits: ``[examples, ways]``.
        labels: ``[examples]`` integer class ids in ``[0, ways)``.

    Returns:
        ``(loss, {"loss": loss, "accuracy": fraction correct})``.
    """
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"cross_entropy needs integer class labels, got {labels.dtype} targets; "
            "use metajax.losses.mse for regression."
        )
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"cross_entropy needs logits [examples, ways] for labels [examples], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype))
    return loss, {"loss": loss, "accuracy": accuracy}


Objective = Callable[[jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def default_objective(targets: jax.Array) -> Objective:
    """The objective a task's targets call for: :func:`cross_entropy` for integer class labels, else :func:`mse`."""
    return cross_entropy if jnp.issubdtype(targets.dtype, jnp.integer) else mse


def resolve(objective: Objective | None, targets: jax.Array) -> Objective:
    """``objective``, or the :func:`default_objective` of ``targets`` when it is ``None``."""
    return default_objective(targets) if objective is None else objective
