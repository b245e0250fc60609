"""Task objectives: ``objective(predictions, targets) -> (loss, metrics)``.

Every learner takes its objective as a value, so regression and classification share
one code path. Metrics are scalars whose names the evaluation reports.
"""

from __future__ import annotations

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
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype))
    return loss, {"loss": loss, "accuracy": accuracy}
