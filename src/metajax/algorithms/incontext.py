"""What in-context learners share: the support set as labelled tokens, queries answered in one pass.

An in-context learner embeds every example (with a flax ``embed`` module), encodes the
support labels (one-hot for classification, the targets themselves for regression) and
hands ``(support features, support labels, query features)`` to a sequence network that
returns the queries' outputs. There is no gradient step at test time: ``adapt`` only
embeds the support set. :class:`~metajax.algorithms.transformer.TransformerICL` and
:class:`~metajax.algorithms.snail.SNAIL` differ only in that sequence network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import losses
from metajax._checks import check_positive_int
from metajax.algorithms.protonet import flat_embedding
from metajax.episode import Episode
from metajax.learner import adapts_nothing, evaluate_without_steps


def encode_labels(y: jax.Array, outputs: int, dtype) -> jax.Array:
    """Support labels as token features ``[examples, outputs]``.

    Integer class labels ``[examples]`` in ``[0, outputs)`` are one-hot encoded;
    real-valued regression targets must already be ``[examples, outputs]``.
    """
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.ndim != 1:
            raise ValueError(f"class labels must have shape [examples], got shape {tuple(y.shape)}.")
        return jax.nn.one_hot(y, outputs, dtype=dtype)
    if y.ndim != 2 or y.shape[-1] != outputs:
        raise ValueError(
            f"regression targets must have shape [examples, outputs={outputs}], got shape {tuple(y.shape)}."
        )
    return y.astype(dtype)


def unit_features(fs: jax.Array, fq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Support and query features ``[S, F]``, ``[Q, F]`` layer-normalised, then divided by ``sqrt(F)``.

    Called inside a sequence model's ``nn.compact`` method: one ``LayerNorm`` (parameters
    ``features/{scale,bias}``) for both, so a token's features have about a one-hot
    label's unit norm whatever the embedding's scale.
    """
    norm = nn.LayerNorm(name="features")
    return norm(fs) / fs.shape[-1] ** 0.5, norm(fq) / fq.shape[-1] ** 0.5


@dataclasses.dataclass(frozen=True)
class InContextLearner:
    """Base of the in-context learners: embedding, label encoding and the shared protocol methods.

    A subclass gives ``sequence_model()``: a flax module
    ``(fs [S, F], ys [S, outputs], fq [Q, F]) -> [Q, outputs]`` that answers every query
    from the support tokens without letting one query see another. With batch-statistics
    backbones (``Conv4``) the support set and the queries are embedded as separate
    batches, as in ``ProtoNet``.

    Attributes:
        embed: flax module ``x [examples, *features] -> features [examples, ...]``
            (flattened), e.g. ``MLP(out=None)`` or ``Conv4(out=None)``.
        outputs: ways (classification) or target size (regression).
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.
        shuffle_support: present the support tokens in a random order drawn from ``adapt``'s
            ``key`` (none without a key). For models that read the support set in order:
            the few-shot tasks' support sets are class-major, so without it labels would
            sit at fixed positions and a sequence model could learn positions, not labels.
        feature_norm: the sequence model layer-normalises the features (one learned scale
            and offset) and brings them to unit norm before they join a token beside the
            label (``False``: the raw features), with :func:`unit_features`. A Conv4
            embedding's features have about 20 times the norm of a one-hot label; with
            them raw, the tokens carry little of the label and meta-training sat at chance
            (README, "Attention-based learners"). On sinusoid regression (an MLP embedding,
            real targets) the raw features measured better, so the registry turns it on
            for classification tasks only.
    """

    embed: nn.Module
    outputs: int
    objective: Callable | None = dataclasses.field(default=None, kw_only=True)
    shuffle_support: bool = dataclasses.field(default=False, kw_only=True)
    feature_norm: bool = dataclasses.field(default=True, kw_only=True)

    def __post_init__(self):
        check_positive_int("outputs", self.outputs)

    def sequence_model(self) -> nn.Module:
        """The flax module reading the support tokens and answering the queries."""
        raise NotImplementedError(f"{type(self).__name__} must define sequence_model().")

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"embed": ..., "sequence": ...}`` shaped by one episode."""
        k_embed, k_net = jax.random.split(key)
        embed = self.embed.init(k_embed, episode.support_x).get("params", {})
        fs, fq = (
            flat_embedding(self.embed, embed, episode.support_x),
            flat_embedding(self.embed, embed, episode.query_x),
        )
        ys = encode_labels(episode.support_y, self.outputs, fs.dtype)
        return {"embed": embed, "sequence": self.sequence_model().init(k_net, fs, ys, fq)["params"]}

    adapted_params = adapts_nothing
    evaluate = evaluate_without_steps

    def adapt(
        self, params: dict, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> dict:
        """The support set in context: ``{"params", "features" [S, F], "labels" [S, outputs]}``.

        ``key`` orders the support tokens with ``shuffle_support``; ``num_steps`` is ignored:
        there are no gradient steps at test time.
        """
        del num_steps
        sx, sy = support
        features = flat_embedding(self.embed, params["embed"], sx)
        labels = encode_labels(sy, self.outputs, features.dtype)
        if self.shuffle_support and key is not None:
            order = jax.random.permutation(key, features.shape[0])
            features, labels = features[order], labels[order]
        return {"params": params, "features": features, "labels": labels}

    def predict(self, adapted: dict, x: jax.Array) -> jax.Array:
        """Outputs ``[examples, outputs]`` for queries ``x [examples, *features]``."""
        params = adapted["params"]
        queries = flat_embedding(self.embed, params["embed"], x)
        net = self.sequence_model()
        outputs = net.apply({"params": params["sequence"]}, adapted["features"], adapted["labels"], queries)
        return cast(jax.Array, outputs)  # flax types apply's result loosely; without mutable= it is the output

    def loss(self, params: dict, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """The queries' objective given the support set in context, and its metrics."""
        outputs = self.predict(self.adapt(params, episode.support, key), episode.query_x)
        return losses.resolve(self.objective, episode.query_y)(outputs, episode.query_y)
