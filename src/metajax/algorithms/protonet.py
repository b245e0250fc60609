"""Prototypical Networks (Snell et al., 2017): classify queries by their distance to class means."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metajax import losses
from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.algorithms.inner import apply_model
from metajax.episode import Episode
from metajax.learner import Spec, adapts_nothing, evaluate_without_steps, register

DISTANCES = ("euclidean", "cosine")

# Floor on vector norms before dividing, so that a zero embedding gives a zero direction, not NaN.
_NORM_EPS = 1e-8


def check_labels(ways: int, labels: jax.Array, name: str) -> None:
    """Raise ``ValueError`` if concrete integer ``labels`` fall outside ``[0, ways)``; traced labels pass.

    Under ``jit`` and ``vmap`` the values are unknown; ``init`` (called by ``init_state``
    on a concrete episode, outside ``jit``) and eager calls are checked.
    """
    if isinstance(labels, jax.core.Tracer) or not jnp.issubdtype(labels.dtype, jnp.integer) or labels.size == 0:
        return
    values = np.asarray(labels)  # numpy: concrete labels closed over by a traced function stay concrete
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= ways:
        raise ValueError(
            f"{name} must hold class labels in [0, ways={ways}), got labels from {low} to {high}; "
            "check the learner's ways against the task's ways."
        )


def check_support(ways: int, support_x: jax.Array, support_y: jax.Array) -> None:
    """Raise unless ``support_y`` holds integer labels ``[examples]`` in ``[0, ways)`` for at least ``ways`` examples.

    The static facts (shapes, dtypes) are always checked; the label values only where they
    are concrete (:func:`check_labels`): under ``jit`` a label outside ``[0, ways)`` would be
    one-hot encoded as all zeros and silently contribute to no class.

    Args:
        ways: number of classes the learner was configured for.
        support_x: ``[examples, *features]``.
        support_y: ``[examples]`` integer labels.
    """
    if not jnp.issubdtype(support_y.dtype, jnp.integer):
        raise TypeError(f"support_y must hold integer class labels in [0, {ways}), got dtype {support_y.dtype}.")
    if support_y.ndim != 1 or support_x.shape[:1] != support_y.shape:
        raise ValueError(
            f"support_y must have shape [examples] matching support_x {tuple(support_x.shape)}, "
            f"got shape {tuple(support_y.shape)}."
        )
    if support_y.shape[0] < ways:
        raise ValueError(
            f"ways={ways} needs at least one support example per class, but the support set has "
            f"{support_y.shape[0]} examples; check `ways` against the task's ways."
        )
    check_labels(ways, support_y, "support_y")


def flat_embedding(embed: nn.Module, params: Any, x: jax.Array) -> jax.Array:
    """``embed(x)`` flattened to ``[examples, D]``."""
    features = apply_model(embed, params, x)
    return features.reshape(features.shape[0], -1)


def normalize(v: jax.Array) -> jax.Array:
    """Rows of ``v`` ``[n, D]`` scaled to unit Euclidean norm (zero rows stay zero)."""
    norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
    return v / jnp.maximum(norm, _NORM_EPS)


def class_means(embeddings: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Mean embedding of each class ``[ways, D]`` from ``embeddings [n, D]`` and integer ``labels [n]``.

    A class without examples gets a zero mean.
    """
    one_hot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)  # [n, ways]
    counts = jnp.maximum(jnp.sum(one_hot, axis=0), 1.0)  # [ways]
    return (one_hot.T @ embeddings) / counts[:, None]


def similarity(queries: jax.Array, prototypes: jax.Array, distance: str) -> jax.Array:
    """Similarities ``[n, ways]`` of ``queries [n, D]`` to ``prototypes [ways, D]``.

    ``"euclidean"``: the negative squared distance; ``"cosine"``: the cosine similarity.
    """
    if distance == "cosine":
        return normalize(queries) @ normalize(prototypes).T
    # Explicit differences rather than |q|^2 - 2 q.p + |p|^2: no cancellation, and
    # [queries, ways, D] is small for few-shot tasks.
    return -jnp.sum(jnp.square(queries[:, None, :] - prototypes[None, :, :]), axis=-1)


@dataclasses.dataclass(frozen=True)
class ProtoNet:
    """Prototypical Networks: a learned embedding and a nearest-class-mean classifier.

    A task is "adapted" without any gradient step: each class's prototype is the mean
    embedding of its support examples, and a query's logits are its similarities to the
    prototypes. The meta-parameters are the embedding's weights; the meta-objective is
    the cross-entropy of the queries.

    ``logits = temperature * similarity``, where the similarity is the negative squared
    Euclidean distance (``distance="euclidean"``, the paper's choice) or the cosine
    similarity (``distance="cosine"``, which usually needs a temperature of about 10 to
    give confident predictions).

    With a backbone that normalises with batch statistics (``Conv4``), the support set
    and the queries are embedded as separate batches, in ``loss`` as in ``adapt``/``predict``.

    Attributes:
        embed: flax module ``x [examples, *features] -> embeddings [examples, ...]``
            (flattened to ``[examples, D]``), e.g. ``Conv4(out=None)`` or ``MLP(out=None)``.
        ways: classes per task; support and query labels are integers in ``[0, ways)``.
        distance: ``"euclidean"`` or ``"cosine"``.
        temperature: positive scale of the logits.

    Example:
        >>> import jax, jax.numpy as jnp, metajax
        >>> learner = ProtoNet(metajax.models.MLP(hidden=(16,), out=None), ways=2)
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> y = jnp.array([0, 1, 0, 1])
        >>> episode = metajax.Episode(x, y, x, y)
        >>> params = learner.init(jax.random.key(1), episode)
        >>> loss, metrics = learner.loss(params, episode, jax.random.key(2))
        >>> sorted(metrics)
        ['accuracy', 'loss']
        >>> learner.adapt(params, episode.support, None)["prototypes"].shape
        (2, 16)
    """

    embed: nn.Module
    ways: int
    distance: str = "euclidean"
    temperature: float = 1.0

    def __post_init__(self):
        check_positive_int("ways", self.ways)
        check_choice("distance", self.distance, DISTANCES)
        check_positive("temperature", self.temperature)

    def init(self, key: jax.Array, episode: Episode) -> Any:
        """The embedding's initial weights, shaped by one (unbatched) episode."""
        check_support(self.ways, episode.support_x, episode.support_y)
        check_labels(self.ways, episode.query_y, "query_y")
        # A parameter-free embedding (a fixed feature map) has no "params" collection.
        return self.embed.init(key, episode.support_x).get("params", {})

    adapted_params = adapts_nothing
    evaluate = evaluate_without_steps

    def adapt(
        self, params: Any, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> dict:
        """Prototypes of one task's classes.

        Args:
            params: embedding weights.
            support: ``(support_x [S, *features], support_y [S])``.
            key: unused (the adaptation is deterministic).
            num_steps: ignored: the prototypes are computed in closed form, there are no
                inner steps (accepted so that every learner shares one ``adapt`` signature).

        Returns:
            ``{"params": params, "prototypes": [ways, D]}``; a class without support
            examples gets a zero prototype.
        """
        del key, num_steps
        sx, sy = support
        check_support(self.ways, sx, sy)
        return {"params": params, "prototypes": class_means(flat_embedding(self.embed, params, sx), sy, self.ways)}

    def predict(self, adapted: dict, x: jax.Array) -> jax.Array:
        """Logits ``[examples, ways]`` of inputs ``x [examples, *features]`` given ``adapt``'s output."""
        queries = flat_embedding(self.embed, adapted["params"], x)
        return self.temperature * similarity(queries, adapted["prototypes"], self.distance)

    def loss(self, params: Any, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Query cross-entropy of one task, and ``{"loss", "accuracy"}``."""
        adapted = self.adapt(params, episode.support, key)
        return losses.cross_entropy(self.predict(adapted, episode.query_x), episode.query_y)


@register("protonet", family="metric", kinds=("classification",))
def _protonet(spec: Spec) -> ProtoNet:
    """Prototypical Networks on the embedding ``spec.network(None)``, ``outputs`` ways."""
    return ProtoNet(spec.network(None), ways=spec.outputs)
