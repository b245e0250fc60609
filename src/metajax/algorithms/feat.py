"""FEAT (Ye et al., 2020): prototypes adapted to the task by a set-to-set Transformer, then ProtoNet's classifier.

The support prototypes of a task (class means of the embedding, as in ProtoNet) pass
together through one self-attention layer (single head, residual, layer norm; FEAT's
"Transformer" set function), so each class's prototype is adjusted in view of the other
classes of the episode; the queries are then classified by their distance to the adapted
prototypes. The optional contrastive regulariser (the paper's Eq. 8) applies the same set
function to all the instances of each class, support and query together, and asks every
instance to be classified to its class's centre among the adapted centres; its weight is
``contrastive`` (the paper's ``balance``, 0.1 to 1; 0 turns it off).

FEAT pre-trains its backbone by classification on the training classes; here the whole
model is meta-trained from the initialisation, as ProtoNet is in metajax.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import losses
from metajax._checks import check_choice, check_positive, check_positive_int
from metajax.algorithms.protonet import DISTANCES, check_support, class_means, flat_embedding, similarity
from metajax.episode import Episode
from metajax.learner import Spec, adapts_nothing, evaluate_without_steps, register


class SetAttention(nn.Module):
    """FEAT's set-to-set function: one-head self-attention, dropout, residual, layer norm.

    ``x [n, D]`` -> ``[n, D]``; with ``mask [n, n]`` (bool, ``mask[i, j]`` if ``i`` may attend
    to ``j``) attention is restricted, e.g. to instances of the same class. Without
    positional information the output is equivariant to the order of the set.
    """

    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
        d = x.shape[-1]
        q, k, v = (nn.Dense(d, use_bias=False, name=n)(x)[None, :, None] for n in ("query", "key", "value"))
        read = jax.nn.dot_product_attention(q, k, v, mask=mask)[0, :, 0]
        out = nn.Dropout(self.dropout)(nn.Dense(d, name="out")(read), deterministic=deterministic)
        return nn.LayerNorm()(x + out)


@dataclasses.dataclass(frozen=True)
class FEAT:
    """FEAT: ProtoNet whose prototypes a set-to-set attention layer adapts to each task.

    ``logits = temperature * similarity(query, adapted prototype)``, with ProtoNet's
    similarities; FEAT's ``-distance / 64`` on Conv4 is ``temperature=1/64``. Dropout of the
    set function acts in ``loss`` (meta-training) only; ``adapt``/``predict`` (and so
    ``evaluate``) are deterministic. With batch-statistics backbones (``Conv4``) the support
    set and the queries are embedded as separate batches, as in ``ProtoNet``.

    Attributes:
        embed: flax module ``x [examples, *features] -> embeddings [examples, ...]``.
        ways: classes per task; labels are integers in ``[0, ways)``.
        distance: ``"euclidean"`` or ``"cosine"``.
        temperature: positive scale of the logits.
        contrastive: weight of the contrastive regulariser (``0``: off).
        contrastive_temperature: positive scale of the regulariser's logits.
        dropout: dropout rate of the set function's output during meta-training.

    Example:
        >>> import jax, jax.numpy as jnp, metajax
        >>> learner = FEAT(metajax.models.MLP(hidden=(16,), out=None), ways=2, contrastive=0.1)
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> episode = metajax.Episode(x, jnp.array([0, 1, 0, 1]), x, jnp.array([0, 1, 0, 1]))
        >>> params = learner.init(jax.random.key(1), episode)
        >>> sorted(learner.loss(params, episode, jax.random.key(2))[1])
        ['accuracy', 'contrastive', 'loss']
        >>> learner.adapt(params, episode.support, None)["prototypes"].shape
        (2, 16)
    """

    embed: nn.Module
    ways: int
    distance: str = "euclidean"
    temperature: float = 1 / 64
    contrastive: float = 0.0
    contrastive_temperature: float = 1 / 64
    dropout: float = 0.5

    def __post_init__(self):
        check_positive_int("ways", self.ways)
        check_choice("distance", self.distance, DISTANCES)
        check_positive("temperature", self.temperature)
        check_positive("contrastive_temperature", self.contrastive_temperature)
        if not 0 <= self.contrastive < float("inf"):
            raise ValueError(f"contrastive must be a finite weight >= 0, got {self.contrastive!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a rate in [0, 1), got {self.dropout!r}.")

    def _set(self) -> SetAttention:
        return SetAttention(self.dropout)

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"embed": ..., "set": ...}`` shaped by one (unbatched) episode."""
        check_support(self.ways, episode.support_x, episode.support_y)
        k_embed, k_set = jax.random.split(key)
        embed = self.embed.init(k_embed, episode.support_x).get("params", {})
        prototypes = class_means(flat_embedding(self.embed, embed, episode.support_x), episode.support_y, self.ways)
        return {"embed": embed, "set": self._set().init(k_set, prototypes)["params"]}

    adapted_params = adapts_nothing

    def evaluate(self, params: dict, episode: Episode, key: jax.Array, num_steps: int | None = None) -> dict:
        """``loss``'s metrics as arrays ``[1]``, without dropout (``key`` and ``num_steps`` unused)."""
        del key
        return evaluate_without_steps(self, params, episode, None, num_steps)  # no key: no dropout

    def _transform(self, params: dict, x: jax.Array, mask: jax.Array | None, key: jax.Array | None) -> jax.Array:
        """The set function on ``x [n, D]``; dropout from ``key``, none without one."""
        rngs = None if key is None else {"dropout": key}
        out = self._set().apply({"params": params["set"]}, x, mask, deterministic=key is None, rngs=rngs)
        return cast(jax.Array, out)  # flax types apply's result loosely; without mutable= it is the output

    def _adapt(self, params: dict, embeddings: jax.Array, labels: jax.Array, key: jax.Array | None) -> jax.Array:
        """Adapted prototypes ``[ways, D]`` of ``embeddings [n, D]`` with ``labels [n]``."""
        return self._transform(params, class_means(embeddings, labels, self.ways), None, key)

    def adapt(
        self, params: dict, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> dict:
        """The task's adapted prototypes: ``{"params", "prototypes" [ways, D]}``.

        ``key`` and ``num_steps`` are unused: the adaptation is one deterministic attention pass.
        """
        del key, num_steps
        sx, sy = support
        check_support(self.ways, sx, sy)
        return {
            "params": params,
            "prototypes": self._adapt(params, flat_embedding(self.embed, params["embed"], sx), sy, None),
        }

    def predict(self, adapted: dict, x: jax.Array) -> jax.Array:
        """Logits ``[examples, ways]`` of inputs ``x [examples, *features]`` given ``adapt``'s output."""
        queries = flat_embedding(self.embed, adapted["params"]["embed"], x)
        return self.temperature * similarity(queries, adapted["prototypes"], self.distance)

    def regularizer(self, params: dict, embeddings: jax.Array, labels: jax.Array, key: jax.Array | None) -> jax.Array:
        """The contrastive term: cross-entropy of every instance against the adapted class centres.

        ``embeddings [n, D]`` of all instances (support and query), ``labels [n]``. The set
        function runs over each class's instances (attention masked to the same class);
        the centres are the class means of its outputs.
        """
        adapted = self._transform(params, embeddings, labels[:, None] == labels[None, :], key)
        logits = self.contrastive_temperature * similarity(
            embeddings, class_means(adapted, labels, self.ways), self.distance
        )
        return losses.cross_entropy(logits, labels)[0]

    def loss(self, params: dict, episode: Episode, key: jax.Array | None) -> tuple[jax.Array, dict]:
        """Query cross-entropy plus ``contrastive`` x the regulariser; ``{"loss", "accuracy", "contrastive"}``.

        ``metrics["loss"]`` is the query cross-entropy alone, comparable with ProtoNet's;
        the returned objective adds the weighted regulariser. ``key`` drives dropout;
        ``None`` turns it off.
        """
        k_main, k_reg = jax.random.split(key) if key is not None else (None, None)
        check_support(self.ways, episode.support_x, episode.support_y)
        fs = flat_embedding(self.embed, params["embed"], episode.support_x)
        fq = flat_embedding(self.embed, params["embed"], episode.query_x)
        prototypes = self._adapt(params, fs, episode.support_y, k_main)
        loss, metrics = losses.cross_entropy(
            self.temperature * similarity(fq, prototypes, self.distance), episode.query_y
        )
        if self.contrastive:
            reg = self.regularizer(
                params, jnp.concatenate([fs, fq]), jnp.concatenate([episode.support_y, episode.query_y]), k_reg
            )
        else:
            reg = jnp.zeros_like(loss)
        return loss + self.contrastive * reg, {**metrics, "contrastive": reg}


@register("feat", family="attention", kinds=("classification",))
def _feat(spec: Spec, *, contrastive: float = 0.0) -> FEAT:
    """FEAT on the embedding ``spec.network(None)``, ``outputs`` ways, the regulariser off by default."""
    return FEAT(spec.network(None), ways=spec.outputs, contrastive=contrastive)
