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

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax._checks import check_positive_int
from metajax.algorithms.incontext import InContextLearner, unit_features
from metajax.learner import Spec, register


class _Block(nn.Module):
    """Pre-norm Transformer block: masked multi-head self-attention, then a GELU MLP, each residual.

    With ``tied_keys`` the key projection is the query projection plus a zero-initialised
    one: the same model class as independent projections, started where attention compares
    tokens. Meta-trained from scratch, an in-context classifier sits at chance until
    attention matches queries with their class's support tokens; this start shortens that
    plateau (README, "Attention-based learners").
    """

    dim: int
    heads: int
    tied_keys: bool

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        """``h``: ``[T, dim]`` tokens; ``mask``: ``[T, T]`` bool, ``mask[i, j]`` if token ``i`` may attend to ``j``."""
        head_dim = self.dim // self.heads
        y = nn.LayerNorm()(h)
        q, v = (nn.DenseGeneral((self.heads, head_dim), name=n)(y) for n in ("query", "value"))
        if self.tied_keys:  # the queries plus a learned offset from zero: attention starts as a similarity
            k = q + nn.DenseGeneral((self.heads, head_dim), kernel_init=nn.initializers.zeros, name="key_offset")(y)
        else:
            k = nn.DenseGeneral((self.heads, head_dim), name="key")(y)
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
    tied_keys: bool
    feature_norm: bool

    @nn.compact
    def __call__(self, fs: jax.Array, ys: jax.Array, fq: jax.Array) -> jax.Array:
        """``fs``: ``[S, F]``, ``ys``: ``[S, L]``, ``fq``: ``[Q, F]`` -> ``[Q, outputs]``."""
        s, q = fs.shape[0], fq.shape[0]
        if self.feature_norm:
            fs, fq = unit_features(fs, fq)
        support = jnp.concatenate([fs, ys, jnp.ones((s, 1), fs.dtype)], axis=-1)
        queries = jnp.concatenate([fq, jnp.zeros((q, ys.shape[-1] + 1), fq.dtype)], axis=-1)
        h = nn.Dense(self.dim, name="tokens")(jnp.concatenate([support, queries]))
        index = jnp.arange(s + q)
        mask = (index[None, :] < s) | (index[:, None] == index[None, :])  # attend to the support, and to oneself
        for _ in range(self.depth):
            h = _Block(self.dim, self.heads, self.tied_keys)(h, mask)
        return nn.Dense(self.outputs, name="head")(nn.LayerNorm()(h[s:]))


@dataclasses.dataclass(frozen=True)
class TransformerICL(InContextLearner):
    """In-context learning: a Transformer reads the support set and predicts the queries' targets.

    Labels are integers in ``[0, outputs)`` for classification (one-hot encoded) or
    real-valued ``[examples, outputs]`` targets for regression; the objective follows them
    unless given. Embedding, ``feature_norm``, protocol methods and parameters
    ``{"embed", "sequence"}`` as in :class:`~metajax.algorithms.incontext.InContextLearner`.

    Attributes:
        embed: flax module ``x [examples, *features] -> features [examples, ...]``
            (flattened), e.g. ``MLP(out=None)`` or ``Conv4(out=None)``.
        outputs: ways (classification) or target size (regression).
        dim: token width.
        depth: Transformer blocks.
        heads: attention heads (``dim`` must be a multiple).
        tied_keys: start each key projection equal to its query projection (a learned
            offset from zero; ``False``: independent projections, both initialised at random).
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.

    Example:
        >>> import jax, metajax
        >>> learner = TransformerICL(metajax.models.MLP(hidden=(16,), out=None), outputs=1, dim=16, heads=2)
        >>> one = jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid(shots=5).sample(jax.random.key(0), 1))
        >>> params = learner.init(jax.random.key(1), one)
        >>> learner.predict(learner.adapt(params, one.support, None), one.query_x).shape
        (5, 1)
    """

    dim: int = 64
    depth: int = 2
    heads: int = 4
    tied_keys: bool = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("dim", "depth", "heads"):
            check_positive_int(name, getattr(self, name))
        if self.dim % self.heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={self.dim} and heads={self.heads}.")

    def sequence_model(self) -> _InContext:
        """The masked Transformer over support and query tokens."""
        return _InContext(self.dim, self.depth, self.heads, self.outputs, self.tied_keys, self.feature_norm)


@register("transformer", family="attention")
def _transformer(spec: Spec, *, dim: int = 64, depth: int = 2, heads: int = 4) -> TransformerICL:
    """The in-context learner on the features of ``spec.network(None)``; ``feature_norm`` for classification only."""
    classify = spec.kind == "classification"
    return TransformerICL(spec.network(None), spec.outputs, dim=dim, depth=depth, heads=heads, feature_norm=classify)
