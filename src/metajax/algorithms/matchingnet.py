"""Matching Networks (Vinyals et al., 2016): attention over the support set, optionally in full context."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax._checks import check_positive, check_positive_int
from metajax.algorithms.protonet import check_labels, check_support, flat_embedding, normalize
from metajax.episode import Episode
from metajax.learner import Spec, adapts_nothing, evaluate_without_steps, register

# Added to the predicted probabilities before the log, so a zero probability costs a finite loss.
_LOG_EPS = 1e-8


class _SupportContext(nn.Module):
    """Full-context embedding ``g`` of the support set: a bidirectional LSTM with a skip.

    ``g(x_i) = g'(x_i) + h_fwd_i + h_bwd_i``, where ``h_fwd``/``h_bwd`` are the hidden
    states of LSTMs (hidden size ``D``) run forwards and backwards over the sequence of
    support embeddings ``g'(x_1), ..., g'(x_S)`` in the order given.
    """

    @nn.compact
    def __call__(self, g: jax.Array) -> jax.Array:
        """``g``: ``[S, D]`` support embeddings -> ``[S, D]``."""
        features = g.shape[-1]
        forward = nn.RNN(nn.LSTMCell(features, name="forward"))(g[None])[0]
        backward = nn.RNN(nn.LSTMCell(features, name="backward"), reverse=True, keep_order=True)(g[None])[0]
        return g + forward + backward


class _QueryContext(nn.Module):
    """Full-context embedding ``f`` of the queries: an LSTM that attends to the support set.

    For ``k = 1..steps``, starting from ``h_0 = c_0 = 0``::

        r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i)) g(x_i)
        hhat_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
        h_k = hhat_k + f'(x)

    and ``f(x) = h_steps``. The paper's LSTM takes the concatenation ``[h, r]`` as its
    hidden state; its gates are linear in ``[f'(x), h, r]``, which is an LSTM cell with
    input ``[f'(x), r]`` and hidden state ``h``, as written here.

    Attributes:
        steps: processing steps ``K``.
    """

    steps: int

    @nn.compact
    def __call__(self, f: jax.Array, g: jax.Array) -> jax.Array:
        """``f``: ``[Q, D]`` query embeddings, ``g``: ``[S, D]`` support embeddings -> ``[Q, D]``."""
        cell = nn.LSTMCell(f.shape[-1])
        c = h = jnp.zeros_like(f)
        # A few steps, unrolled: one cell (one set of weights) applied ``steps`` times.
        for _ in range(self.steps):
            read = jax.nn.softmax(h @ g.T, axis=-1) @ g
            (c, h), _ = cell((c, h), jnp.concatenate([f, read], axis=-1))
            h = h + f
        return h


@dataclasses.dataclass(frozen=True)
class MatchingNet:
    """Matching Networks: a query's label is an attention-weighted vote of the support labels.

    ``P(y | x, S) = sum_i a(x, x_i) onehot(y_i)`` with
    ``a(x, x_i) = softmax_i(temperature * cos(f(x), g(x_i)))``. Without full context,
    ``f = g = embed``. With ``fce=True``, the support embeddings are re-embedded by a
    bidirectional LSTM over the support set (``_SupportContext``) and each query by
    an LSTM that attends to them for ``fce_steps`` steps (``_QueryContext``). The
    meta-objective is the queries' negative log-likelihood ``-log(P(y | x, S) + 1e-8)``.

    With a backbone that normalises with batch statistics (``Conv4``), the support set
    and the queries are embedded as separate batches. The full-context LSTM reads the
    support set in the order given, so the result depends on that order.

    Attributes:
        embed: flax module ``x [examples, *features] -> embeddings [examples, ...]``
            (flattened to ``[examples, D]``), e.g. ``Conv4(out=None)``.
        ways: classes per task; support and query labels are integers in ``[0, ways)``.
        fce: use full-context embeddings.
        fce_steps: processing steps ``K`` of the query LSTM (used only with ``fce``).
        temperature: positive scale of the cosine similarities before the softmax.

    Example:
        >>> import jax, jax.numpy as jnp, metajax
        >>> learner = MatchingNet(metajax.models.MLP(hidden=(16,), out=None), ways=2, fce=True)
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> y = jnp.array([0, 1, 0, 1])
        >>> episode = metajax.Episode(x, y, x[:3], y[:3])
        >>> params = learner.init(jax.random.key(1), episode)
        >>> sorted(params)
        ['embed', 'query_context', 'support_context']
        >>> learner.attention(params, episode.support_x, episode.query_x).shape
        (3, 4)
        >>> learner.predict(learner.adapt(params, episode.support, None), episode.query_x).shape
        (3, 2)
    """

    embed: nn.Module
    ways: int
    fce: bool = False
    fce_steps: int = 5
    temperature: float = 1.0

    def __post_init__(self):
        check_positive_int("ways", self.ways)
        if not isinstance(self.fce, bool):
            raise TypeError(f"fce must be True or False, got {self.fce!r}.")
        check_positive_int("fce_steps", self.fce_steps)
        check_positive("temperature", self.temperature)

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"embed": ...}``, plus ``"support_context"`` and ``"query_context"`` with ``fce``."""
        check_support(self.ways, episode.support_x, episode.support_y)
        check_labels(self.ways, episode.query_y, "query_y")
        k_embed, k_support, k_query = jax.random.split(key, 3)
        # A parameter-free embedding (a fixed feature map) has no "params" collection.
        params = {"embed": self.embed.init(k_embed, episode.support_x).get("params", {})}
        if self.fce:
            g = flat_embedding(self.embed, params["embed"], episode.support_x)
            f = flat_embedding(self.embed, params["embed"], episode.query_x)
            params["support_context"] = _SupportContext().init(k_support, g)["params"]
            params["query_context"] = _QueryContext(self.fce_steps).init(k_query, f, g)["params"]
        return params

    def attention(self, params: dict, support_x: jax.Array, query_x: jax.Array) -> jax.Array:
        """Attention weights ``[Q, S]`` of queries ``[Q, *features]`` over support examples ``[S, *features]``.

        Each row is a softmax over the support set, so it sums to one.
        """
        return self._attend(params, self._support_embedding(params, support_x), query_x)

    adapted_params = adapts_nothing
    evaluate = evaluate_without_steps

    def adapt(
        self, params: dict, support: tuple[jax.Array, jax.Array], key: jax.Array, num_steps: int | None = None
    ) -> dict:
        """The embedded support set of one task.

        Args:
            params: meta-parameters from ``init``.
            support: ``(support_x [S, *features], support_y [S])``.
            key: unused (the adaptation is deterministic).
            num_steps: ignored: there are no inner steps (accepted so that every learner
                shares one ``adapt`` signature).

        Returns:
            ``{"params": params, "support": g [S, D], "labels": one-hot [S, ways]}``.
        """
        del key, num_steps
        sx, sy = support
        check_support(self.ways, sx, sy)
        g = self._support_embedding(params, sx)
        return {"params": params, "support": g, "labels": jax.nn.one_hot(sy, self.ways, dtype=g.dtype)}

    def predict(self, adapted: dict, x: jax.Array) -> jax.Array:
        """Logits ``[examples, ways]``: ``log(P(y | x, S) + 1e-8)`` for inputs ``x [examples, *features]``."""
        probabilities = self._attend(adapted["params"], adapted["support"], x) @ adapted["labels"]
        return jnp.log(probabilities + _LOG_EPS)

    def loss(self, params: dict, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """Query negative log-likelihood of one task, and ``{"loss", "accuracy"}``."""
        log_probabilities = self.predict(self.adapt(params, episode.support, key), episode.query_x)
        labels = episode.query_y
        loss = -jnp.mean(jnp.take_along_axis(log_probabilities, labels[:, None], axis=-1))
        accuracy = jnp.mean((jnp.argmax(log_probabilities, axis=-1) == labels).astype(log_probabilities.dtype))
        return loss, {"loss": loss, "accuracy": accuracy}

    def _support_embedding(self, params, support_x):
        g = flat_embedding(self.embed, params["embed"], support_x)
        if self.fce:
            g = _SupportContext().apply({"params": params["support_context"]}, g)
        return g

    def _attend(self, params, g, query_x):
        f = flat_embedding(self.embed, params["embed"], query_x)
        if self.fce:
            f = _QueryContext(self.fce_steps).apply({"params": params["query_context"]}, f, g)
        return jax.nn.softmax(self.temperature * (normalize(f) @ normalize(g).T), axis=-1)


@register("matchingnet", family="metric", kinds=("classification",))
def _matchingnet(spec: Spec) -> MatchingNet:
    """Matching Networks (no full context) on the embedding ``spec.network(None)``, ``outputs`` ways."""
    return MatchingNet(spec.network(None), ways=spec.outputs)
