"""Episodes: the support and query sets of one task (or a batch of tasks) as one pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class Episode(struct.PyTreeNode):
    """Support and query sets of a task.

    Unbatched shapes (one task), with ``S`` support and ``Q`` query examples::

        support_x: [S, *feature_shape]    support_y: [S, *label_shape]
        query_x:   [Q, *feature_shape]    query_y:   [Q, *label_shape]

    A batch of tasks is the same pytree with a leading task axis on every array
    (``[tasks, S, ...]``), which is what ``TaskDistribution.sample`` returns and what
    ``jax.vmap`` maps over.

    Example:
        >>> ep = Episode(jnp.zeros((5, 1)), jnp.zeros((5, 1)), jnp.zeros((7, 1)), jnp.zeros((7, 1)))
        >>> ep.query_x.shape
        (7, 1)
    """

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array

    @property
    def support(self) -> tuple[jax.Array, jax.Array]:
        """``(support_x, support_y)``."""
        return self.support_x, self.support_y

    @property
    def query(self) -> tuple[jax.Array, jax.Array]:
        """``(query_x, query_y)``."""
        return self.query_x, self.query_y


def validate_episode(episode: Episode, *, batched: bool, name: str = "episode") -> None:
    """Check shapes and dtypes of an episode; raise ``ValueError`` naming what is wrong.

    Args:
        episode: the episode to check.
        batched: whether every array must carry a leading task axis of one common size.
        name: how the episode is called in the error message.
    """
    if not isinstance(episode, Episode):
        raise TypeError(f"{name} must be a metajax.Episode, got {type(episode).__name__}.")
    arrays = {f: getattr(episode, f) for f in ("support_x", "support_y", "query_x", "query_y")}
    for field, a in arrays.items():
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name}.{field} must be an array, got {type(a).__name__}.")
    lead = 1 if batched else 0
    if batched:
        sizes = {field: a.shape[0] if a.ndim else None for field, a in arrays.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(
                f"{name}: a batch of tasks needs one leading task axis of equal size on every "
                f"array, got leading sizes {sizes}."
            )
    for part in ("support", "query"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim < lead + 2:
            raise ValueError(
                f"{name}.{part}_x must have shape [{'tasks, ' if batched else ''}examples, "
                f"*features] (rank >= {lead + 2}), got shape {tuple(x.shape)}."
            )
        if y.ndim < lead + 1 or y.shape[: lead + 1] != x.shape[: lead + 1]:
            raise ValueError(
                f"{name}.{part}_y must have the same leading "
                f"{'[tasks, examples]' if batched else '[examples]'} axes as {part}_x "
                f"{tuple(x.shape[: lead + 1])}, got shape {tuple(y.shape)}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name}.{part}_x must be floating point, got dtype {x.dtype}.")
    if arrays["support_x"].shape[lead + 1 :] != arrays["query_x"].shape[lead + 1 :]:
        raise ValueError(
            f"{name}: support_x and query_x must share feature shape, got "
            f"{tuple(arrays['support_x'].shape[lead + 1 :])} and "
            f"{tuple(arrays['query_x'].shape[lead + 1 :])}."
        )
    if arrays["support_y"].dtype != arrays["query_y"].dtype:
        raise TypeError(
            f"{name}: support_y and query_y must share a dtype, got "
            f"{arrays['support_y'].dtype} and {arrays['query_y'].dtype}."
        )


class StreamBatch(struct.PyTreeNode):
    """One step of a continual stream, what an :class:`~metajax.learner.OnlineLearner` learns from.

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
