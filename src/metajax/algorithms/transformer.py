"""A Transformer in-context learner: the support set as tokens, queries answered with no gradient step.

Each support example becomes a token from its features and its label (one-hot for
classification, the target itself for regression) and a support flag; each query a token
from its features, a zero label and no flag. Support tokens attend to each other
(bidirectionally); a query attends to the support tokens and to itself only, so queries
are answered independently of each other and of their order. There are no positional
encodings: the prediction does not depend on the order of the support set. The
meta-parameters are the embedding's and the Transformer's weights, meta-trained by
:func:`metajax.train` on the queries' objective, as Garg et al. (2022) train in-context
regression and Brown et al. (2020) call in-context learning.
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
from metajax.learner import Spec, adapts_nothing, evaluate_without_steps, register


class _Block(nn.Module):
    """Pre-norm Transformer block: masked multi-head self-attention, then a GELU MLP, each residual."""

    dim: int
    heads: int

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        """``h``: ``[T, dim]`` tokens; ``mask``: ``[T, T]`` bool, ``mask[i, j]`` if token ``i`` may attend to ``j``."""
        head_dim = self.dim // self.heads
        y = nn.LayerNorm()(h)
        q, k, v = (nn.DenseGeneral((self.heads, head_dim), name=n)(y) for n in ("query", "key", "value"))
        # jax.nn.dot_product_attention picks a fused kernel where the backend has one (cuDNN on GPU).
        attended = jax.nn.dot_product_attention(q[None], k[None], v[None], mask=mask[None, None])[0]
        h = h + nn.DenseGeneral(self.dim, axis=(-2, -1), name="out")(attended)
        y = nn.LayerNorm()(h)
        return h + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(y)))


class _InContext(nn.Module):
    """``(support features, encoded support labels, query features) -> query outputs``."""

    dim: int
    depth: int
    heads: int
    outputs: int

    @nn.compact
    def __call__(self, fs: jax.Array, ys: jax.Array, fq: jax.Array) -> jax.Array:
        """``fs``: ``[S, F]``, ``ys``: ``[S, L]``, ``fq``: ``[Q, F]`` -> ``[Q, outputs]``."""
        s, q = fs.shape[0], fq.shape[0]
        support = jnp.concatenate([fs, ys, jnp.ones((s, 1), fs.dtype)], axis=-1)
        queries = jnp.concatenate([fq, jnp.zeros((q, ys.shape[-1] + 1), fq.dtype)], axis=-1)
        h = nn.Dense(self.dim, name="tokens")(jnp.concatenate([support, queries]))
        index = jnp.arange(s + q)
        mask = (index[None, :] < s) | (index[:, None] == index[None, :])  # attend to the support, and to oneself
        for _ in range(self.depth):
            h = _Block(self.dim, self.heads)(h, mask)
        return nn.Dense(self.outputs, name="head")(nn.LayerNorm()(h[s:]))


@dataclasses.dataclass(frozen=True)
class TransformerICL:
    """In-context learning: a Transformer reads the support set and predicts the queries' targets.

    With batch-statistics backbones (``Conv4``) the support set and the queries are
    embedded as separate batches, as in ``ProtoNet``. Labels are integers in ``[0, outputs)``
    for classification (one-hot encoded) or real-valued ``[examples, outputs]`` targets
    for regression; the objective follows them unless given.

    Attributes:
        embed: flax module ``x [examples, *features] -> features [examples, ...]``
            (flattened), e.g. ``MLP(out=None)`` or ``Conv4(out=None)``.
        outputs: ways (classification) or target size (regression).
        dim: token width.
        depth: Transformer blocks.
        heads: attention heads (``dim`` must be a multiple).
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.

    Example:
        >>> import jax, metajax
        >>> learner = TransformerICL(metajax.models.MLP(hidden=(16,), out=None), outputs=1, dim=16, heads=2)
        >>> one = jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid(shots=5).sample(jax.random.key(0), 1))
        >>> params = learner.init(jax.random.key(1), one)
        >>> learner.predict(learner.adapt(params, one.support, None), one.query_x).shape
        (5, 1)
    """

    embed: nn.Module
    outputs: int
    dim: int = 64
    depth: int = 2
    heads: int = 4
    objective: Callable | None = None

    def __post_init__(self):
        for name in ("outputs", "dim", "depth", "heads"):
            check_positive_int(name, getattr(self, name))
        if self.dim % self.heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={self.dim} and heads={self.heads}.")

    def _net(self) -> _InContext:
        return _InContext(self.dim, self.depth, self.heads, self.outputs)

    def _labels(self, y: jax.Array, dtype) -> jax.Array:
        if jnp.issubdtype(y.dtype, jnp.integer):
            if y.ndim != 1:
                raise ValueError(f"class labels must have shape [examples], got shape {tuple(y.shape)}.")
            return jax.nn.one_hot(y, self.outputs, dtype=dtype)
        if y.ndim != 2 or y.shape[-1] != self.outputs:
            raise ValueError(
                f"regression targets must have shape [examples, outputs={self.outputs}], got shape {tuple(y.shape)}."
            )
        return y.astype(dtype)

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"embed": ..., "transformer": ...}`` shaped by one episode."""
        k_embed, k_net = jax.random.split(key)
        embed = self.embed.init(k_embed, episode.support_x).get("params", {})
        fs, fq = (
            flat_embedding(self.embed, embed, episode.support_x),
            flat_embedding(self.embed, embed, episode.query_x),
        )
        ys = self._labels(episode.support_y, fs.dtype)
        return {"embed": embed, "transformer": self._net().init(k_net, fs, ys, fq)["params"]}

    adapted_params = adapts_nothing
    evaluate = evaluate_without_steps

    def adapt(
        self, params: dict, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> dict:
        """The support set in context: ``{"params", "features" [S, F], "labels" [S, L]}``.

        ``num_steps`` is ignored: there are no gradient steps at test time.
        """
        del key, num_steps
        sx, sy = support
        features = flat_embedding(self.embed, params["embed"], sx)
        return {"params": params, "features": features, "labels": self._labels(sy, features.dtype)}

    def predict(self, adapted: dict, x: jax.Array) -> jax.Array:
        """Outputs ``[examples, outputs]`` for queries ``x [examples, *features]``."""
        params = adapted["params"]
        queries = flat_embedding(self.embed, params["embed"], x)
        outputs = self._net().apply({"params": params["transformer"]}, adapted["features"], adapted["labels"], queries)
        return cast(jax.Array, outputs)  # flax types apply's result loosely; without mutable= it is the output

    def loss(self, params: dict, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """The queries' objective given the support set in context, and its metrics."""
        outputs = self.predict(self.adapt(params, episode.support, key), episode.query_x)
        return losses.resolve(self.objective, episode.query_y)(outputs, episode.query_y)


@register("transformer", family="attention")
def _transformer(spec: Spec, *, dim: int = 64, depth: int = 2, heads: int = 4) -> TransformerICL:
    """The in-context learner on the features of ``spec.network(None)``."""
    return TransformerICL(spec.network(None), spec.outputs, dim=dim, depth=depth, heads=heads)
