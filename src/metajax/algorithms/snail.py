"""SNAIL (Mishra et al., 2018): temporal convolutions and causal soft attention over the support sequence.

The episode is a sequence: the support examples as ``(embedding, one-hot label)`` tokens,
then the query with a null label, and the prediction is read at the query's position.
The network interleaves attention blocks (causal single-head soft attention whose read is
concatenated to the features) and TC blocks (dense blocks of gated, dilated causal
convolutions with kernel 2, dilations 1, 2, 4, ... up to the sequence length, each
concatenating its ``filters`` new features), then a linear read-out. For Omniglot and
miniImageNet the paper's stack is ``Attention(64, 32), TC(128), Attention(256, 128),
TC(128), Attention(512, 256)``, the default here.

Every query sits at position ``S`` (after the ``S`` support tokens) of its own sequence,
as in the paper; because the network is causal the support tokens never see a query, so
the support activations are computed once and all queries are answered in one pass, each
seeing the support set and itself only. Unlike the Transformer learner, SNAIL reads the
support set in order: its prediction depends on that order, so the support tokens are
shuffled per episode (``shuffle_support``, from the episode's key), as the paper's
sequences are; the few-shot tasks' class-major support sets would otherwise put each
label at a fixed position.

One departure from the paper, measured: the features are layer-normalised and brought to
unit norm before they join the one-hot label (``feature_norm``, on for classification;
the paper concatenates the raw Conv4 features, whose norm is about 20 times the label's).
On Omniglot 5-way 1-shot, 300 meta-steps from the same start and episodes, test accuracy
was 84.9 % with it and 37.2 % without (``scripts/icl_plateau.py --learner snail``; README,
"Attention-based learners").
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax._checks import check_positive_int
from metajax.algorithms.incontext import InContextLearner, unit_features
from metajax.learner import Spec, register

# The paper's stack for few-shot classification: (key size, value size) of each attention
# block; a TC block of TC_FILTERS filters between consecutive attention blocks.
ATTENTION = ((64, 32), (256, 128), (512, 256))
TC_FILTERS = 128


def dilations(length: int) -> tuple[int, ...]:
    """Dilations ``1, 2, 4, ...`` of a TC block over ``length`` tokens: ``ceil(log2 length)`` of them.

    Kernel-2 causal convolutions at these dilations give the last token a receptive field
    of the whole sequence.
    """
    return tuple(2**i for i in range(max(1, math.ceil(math.log2(length)))))


class _Sequence(nn.Module):
    """``(support features [S, F], support labels [S, L], query features [Q, F]) -> [Q, outputs]``."""

    outputs: int
    attention: tuple[tuple[int, int], ...]
    filters: int
    feature_norm: bool

    @nn.compact
    def __call__(self, fs: jax.Array, ys: jax.Array, fq: jax.Array) -> jax.Array:
        s, q = fs.shape[0], fq.shape[0]
        if self.feature_norm:
            fs, fq = unit_features(fs, fq)
        h = jnp.concatenate(
            [jnp.concatenate([fs, ys], axis=-1), jnp.concatenate([fq, jnp.zeros((q, ys.shape[-1]), fq.dtype)], -1)]
        )
        # Support token i sits at position i; every query at position s, right after the support set.
        position = jnp.concatenate([jnp.arange(s), jnp.full((q,), s)])
        index = jnp.arange(s + q)
        visible = ((index[None, :] < s) & (position[None, :] <= position[:, None])) | (index[:, None] == index[None, :])
        for i, (key_size, value_size) in enumerate(self.attention):
            if i:
                for d in dilations(s + 1):
                    h = self._dense_block(h, position, d)
            h = self._attention_block(h, visible, key_size, value_size)
        return nn.Dense(self.outputs, name="readout")(h[s:])

    def _dense_block(self, h: jax.Array, position: jax.Array, dilation: int) -> jax.Array:
        """Gated causal convolution (kernel 2, ``dilation``): ``[T, C] -> [T, C + filters]``.

        The earlier tap of a token at position ``p`` is the support token at ``p - dilation``
        (zero before the sequence starts): support positions equal support indices.
        """
        source = position - dilation
        earlier = jnp.where((source >= 0)[:, None], h[jnp.maximum(source, 0)], 0.0)
        taps = jnp.concatenate([earlier, h], axis=-1)
        xf, xg = nn.Dense(self.filters)(taps), nn.Dense(self.filters)(taps)
        return jnp.concatenate([h, jnp.tanh(xf) * jax.nn.sigmoid(xg)], axis=-1)

    def _attention_block(self, h: jax.Array, visible: jax.Array, key_size: int, value_size: int) -> jax.Array:
        """Causal single-head soft attention: ``[T, C] -> [T, C + value_size]``."""
        q, k = nn.Dense(key_size)(h), nn.Dense(key_size)(h)
        v = nn.Dense(value_size)(h)
        # Written out: the value size differs from the key size, which jax.nn.dot_product_attention refuses.
        logits = jnp.where(visible, q @ k.T / jnp.sqrt(key_size).astype(q.dtype), -jnp.inf)
        return jnp.concatenate([h, jax.nn.softmax(logits, axis=-1) @ v], axis=-1)


@dataclasses.dataclass(frozen=True)
class SNAIL(InContextLearner):
    """SNAIL: the support sequence through TC and causal attention blocks, the query read at its position.

    Embedding, label encoding, ``feature_norm``, protocol methods and parameters
    ``{"embed", "sequence"}`` as in :class:`~metajax.algorithms.incontext.InContextLearner`;
    the support size ``S`` is fixed by the episode's shape, so one compilation serves a run.

    Attributes:
        embed: flax module ``x [examples, *features] -> features [examples, ...]``, the
            paper's ``Conv4(out=None)`` (max-pooled, 64 filters) on images.
        outputs: ways (classification) or target size (regression).
        attention: ``(key size, value size)`` of each attention block, a TC block between
            consecutive ones.
        filters: new features of each dense block of a TC block.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.
        shuffle_support: order the support sequence at random from ``adapt``'s key (default on).

    Example:
        >>> import jax, metajax
        >>> embed = metajax.models.MLP(hidden=(16,), out=None)
        >>> learner = SNAIL(embed, outputs=1, attention=((8, 4), (8, 4)), filters=8)
        >>> one = jax.tree.map(lambda a: a[0], metajax.tasks.Sinusoid(shots=5).sample(jax.random.key(0), 1))
        >>> params = learner.init(jax.random.key(1), one)
        >>> learner.predict(learner.adapt(params, one.support, None), one.query_x).shape
        (5, 1)
    """

    attention: tuple[tuple[int, int], ...] = ATTENTION
    filters: int = TC_FILTERS
    shuffle_support: bool = dataclasses.field(default=True, kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        check_positive_int("filters", self.filters)
        pairs = tuple(tuple(block) for block in self.attention)
        if not pairs or not all(len(b) == 2 and all(isinstance(n, int) and n > 0 for n in b) for b in pairs):
            raise ValueError(
                "attention must be a non-empty sequence of (key size, value size) pairs of positive integers, "
                f"got {self.attention!r}."
            )
        object.__setattr__(self, "attention", pairs)  # hashable, so equal learners share a compiled program

    def sequence_model(self) -> _Sequence:
        """The TC and attention stack over support and query tokens."""
        return _Sequence(self.outputs, self.attention, self.filters, self.feature_norm)


@register("snail", family="attention")
def _snail(spec: Spec, *, attention: tuple[tuple[int, int], ...] = ATTENTION, filters: int = TC_FILTERS) -> SNAIL:
    """SNAIL on the features of ``spec.network(None)``, the paper's stack; ``feature_norm`` for classification only."""
    classify = spec.kind == "classification"
    return SNAIL(spec.network(None), spec.outputs, attention=attention, filters=filters, feature_norm=classify)
