"""OML, online-aware meta-learning (Javed & White, 2019), and its pretraining baseline.

The network is split into a representation (RLN) and a prediction head (PLN). Only the
head learns online, one example at a time, by SGD; the representation is meta-learned so
that such online learning does not interfere with what was learned before.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metajax import losses
from metajax._checks import check_positive
from metajax.algorithms.inner import inner_loop
from metajax.continual.base import apply_model
from metajax.episode import Episode, StreamBatch
from metajax.learner import Spec, register


class ConvRepresentation(nn.Module):
    """OML's representation network for images: 3x3 convolutions with ReLU and no normalisation.

    OML (Javed & White, 2019) uses six 256-channel layers on 84x84 Omniglot; this keeps the
    shape of the design (no batch statistics, so one image at a time is well defined) with
    ``layers`` convolutions of ``filters`` channels, the first ``strided`` of stride 2.

    Attributes:
        filters: channels per layer.
        layers: convolutions.
        strided: how many of the first layers use stride 2.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = ConvRepresentation(filters=8, layers=4, strided=4)
        >>> params = net.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))["params"]
        >>> net.apply({"params": params}, jnp.zeros((2, 28, 28, 1))).shape
        (2, 32)
    """

    filters: int = 64
    layers: int = 4
    strided: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, H, W, C]`` -> ``[B, features]``."""
        if x.ndim != 4:
            raise ValueError(f"ConvRepresentation expects inputs [examples, H, W, C], got shape {x.shape}.")
        for i in range(self.layers):
            stride = 2 if i < self.strided else 1
            x = nn.relu(nn.Conv(self.filters, (3, 3), strides=stride, padding="SAME")(x))
        return x.reshape(x.shape[0], -1)


def output_layer(head_params: dict) -> tuple[str, ...]:
    """Path of the head's output layer: the head itself if it is a ``Dense``, else its last ``Dense_N``."""
    if "kernel" in head_params:
        return ()
    dense = [k for k in head_params if re.fullmatch(r"Dense_\d+", k)]
    if not dense:
        raise ValueError(
            f"the head must be an nn.Dense or hold Dense_N layers (e.g. models.MLP); got keys {sorted(head_params)}."
        )
    return (max(dense, key=lambda k: int(k.split("_")[1])),)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def reset_outputs(head_params: dict, classes: jax.Array | None = None) -> dict:
    """Zero the output layer's weights and biases for ``classes`` (all outputs when ``None``).

    OML resets the output rows of the classes in a trajectory before its inner loop, so
    the meta-objective measures learning them from scratch. The original code re-draws
    them at random; zeros make the reset deterministic and leave untrained classes with
    logit exactly 0.

    Args:
        head_params: the head's parameters.
        classes: ``[k]`` int class ids, or ``None``.
    """
    path = output_layer(head_params)
    layer = _get(head_params, path)
    kernel, bias = layer["kernel"], layer["bias"]
    if classes is None:
        keep = jnp.zeros(kernel.shape[-1], kernel.dtype)
    else:
        keep = jnp.ones(kernel.shape[-1], kernel.dtype).at[classes].set(0.0)
    new = {**layer, "kernel": kernel * keep[None, :], "bias": bias * keep}
    return _set(head_params, path, new)


@dataclasses.dataclass(frozen=True)
class OML:
    """Online-aware meta-learning.

    Meta-parameters are ``{"representation": ..., "head": ...}``. Meta-training follows
    the core contract (``init``, ``loss`` on one :class:`Episode`), so
    :func:`metajax.train` runs it, with episodes from :class:`~metajax.tasks.Trajectories`
    (or :class:`~metajax.tasks.SineTrajectories`): the support set is a
    trajectory learned by the head one example at a time with SGD (``inner_lr``), the
    meta-loss is the objective of the adapted head on the remember set (the query set)
    together with the trajectory, and its gradient reaches the representation through the
    features and through every inner step (second order on the head).

    Online (:meth:`update`), the representation is frozen and the head learns one example
    at a time with step size ``online_lr`` (default ``inner_lr``). The online state is the
    parameter dict itself, so meta-trained parameters are a ready state.

    Attributes:
        representation: flax module ``x -> features`` (no batch statistics: it must treat
            examples independently, since online learning sees one at a time).
        head: flax module ``features -> predictions`` (an ``nn.Dense`` or an MLP).
        inner_lr: SGD step size of the inner loop.
        online_lr: SGD step size when learning online; ``None`` for ``inner_lr``.
        objective: ``(predictions, targets) -> (loss, metrics)``; ``None`` follows the targets.
        reset: zero the output rows of the trajectory's classes before the inner loop
            (classification with global labels).
        meta: ``False`` gives the pretraining baseline of the paper: the same networks
            trained by plain supervised learning on the episodes' examples (no inner
            loop), then learned online the same way.

    Example:
        >>> import jax, flax.linen as nn, metajax
        >>> from metajax.tasks import SineTrajectories
        >>> rep = metajax.models.MLP(hidden=(16,), out=None)
        >>> learner = OML(rep, nn.Dense(1), reset=False)
        >>> episodes = SineTrajectories(functions=2, shots=3, remember=4).sample(jax.random.key(0), 1)
        >>> ep = jax.tree.map(lambda a: a[0], episodes)
        >>> params = learner.init(jax.random.key(1), ep)
        >>> loss, metrics = learner.loss(params, ep, jax.random.key(2))
        >>> sorted(metrics)
        ['mse', 'mse_before']
    """

    representation: nn.Module
    head: nn.Module
    inner_lr: float = 0.03
    online_lr: float | None = None
    objective: Callable | None = None
    reset: bool = True
    meta: bool = True

    def __post_init__(self):
        check_positive("inner_lr", self.inner_lr)
        if self.online_lr is not None:
            check_positive("online_lr", self.online_lr)

    # --- meta-training: the core contract ---------------------------------------------------------

    def init(self, key: jax.Array, episode: Episode) -> dict:
        """``{"representation", "head"}`` shaped by one episode."""
        return self.init_params(key, episode.support_x)

    def adapted_params(self, params: dict) -> dict:
        """The head: the only part learned per trajectory."""
        return params["head"]

    def init_params(self, key: jax.Array, x: jax.Array) -> dict:
        """``{"representation", "head"}`` shaped by inputs ``x [B, ...]``."""
        k_rep, k_head = jax.random.split(key)
        rep = self.representation.init(k_rep, x)["params"]
        return {"representation": rep, "head": self.head.init(k_head, self.features(rep, x))["params"]}

    def features(self, representation: Any, x: jax.Array) -> jax.Array:
        """Representation of inputs ``x [B, ...]``."""
        return apply_model(self.representation, representation, x)

    def loss(self, params: dict, episode: Episode, key: jax.Array) -> tuple[jax.Array, dict]:
        """OML's meta-loss on one episode (trajectory = support, remember set = query).

        Returns:
            ``(loss, metrics)``: the objective's metrics of the adapted head on remember
            set plus trajectory, and the same metric before adaptation as ``<name>_before``.
        """
        del key
        x = jnp.concatenate([episode.query_x, episode.support_x])
        y = jnp.concatenate([episode.query_y, episode.support_y])
        objective = losses.resolve(self.objective, y)
        if not self.meta:
            return objective(self.predict(params, x), y)
        head = params["head"]
        if self.reset:
            head = reset_outputs(head, episode.support_y)
        traj_features = self.features(params["representation"], episode.support_x)
        adapted = self.learn_features(head, traj_features, episode.support_y, optax.sgd(self.inner_lr))
        feats = self.features(params["representation"], x)
        loss, metrics = objective(apply_model(self.head, adapted, feats), y)
        _, before = objective(apply_model(self.head, head, feats), y)
        return loss, {**metrics, **{f"{k}_before": v for k, v in before.items()}}

    def learn_features(self, head: Any, features: jax.Array, y: jax.Array, optimizer: optax.GradientTransformation):
        """The head after one ``optimizer`` update per example ``(features[i], y[i])``, in order.

        :func:`~metajax.inner_loop` with ``per_step=True``, differentiable end to end (second order).
        """
        objective = losses.resolve(self.objective, y)

        def example_loss(h, fy):
            f, t = fy
            return objective(apply_model(self.head, h, f[None]), t[None])

        return inner_loop(example_loss, head, (features, y), optimizer, per_step=True)[0]

    def learn_online(
        self,
        params: dict,
        x: jax.Array,
        y: jax.Array,
        lr: float | None = None,
        *,
        optimizer: optax.GradientTransformation | None = None,
    ) -> dict:
        """OML's meta-test: learn ``(x, y)`` in one pass, one example at a time, head only.

        The representation's features are computed once (it is frozen), so this is a scan
        of head updates. Start the head as OML's evaluations do: :func:`reset_outputs`
        zeroes the output layer; :meth:`reinit_head` re-draws the whole head (the original
        code's evaluation, which then learns with Adam).

        Args:
            params: ``{"representation", "head"}``.
            x: ``[N, ...]`` in presentation order.
            y: ``[N, ...]``.
            lr: SGD step size; ``None`` for ``online_lr`` (or ``inner_lr``).
            optimizer: an Optax transformation to use instead of SGD (e.g. ``optax.adam(1e-3)``;
                its state starts fresh); give ``lr`` or ``optimizer``, not both.

        Returns:
            Parameters with the learned head.
        """
        if optimizer is not None and lr is not None:
            raise ValueError(f"learn_online takes lr or optimizer, not both; got lr={lr} and an optimizer.")
        if optimizer is None:
            optimizer = optax.sgd(self._online_lr() if lr is None else lr)
        head = self.learn_features(params["head"], self.features(params["representation"], x), y, optimizer)
        return {**params, "head": head}

    def reinit_head(self, key: jax.Array, params: dict, x: jax.Array) -> dict:
        """``params`` with the head re-drawn from its initialisers, shaped by inputs ``x [B, ...]``.

        The original OML code evaluates this way: the meta-learned representation is kept
        and the whole prediction network is re-initialised before learning online.
        """
        features = self.features(params["representation"], x[:1])
        return {**params, "head": self.head.init(key, features)["params"]}

    def predict(self, params: dict, x: jax.Array) -> jax.Array:
        """Outputs of the network with ``params`` for ``x [B, ...]``."""
        return apply_model(self.head, params["head"], self.features(params["representation"], x))

    def _online_lr(self) -> float:
        return self.inner_lr if self.online_lr is None else self.online_lr

    # --- online: the continual contract (the online state is the parameter dict itself) ------------

    def init_state(self, key: jax.Array, x: jax.Array, y: jax.Array) -> dict:
        """Freshly initialised parameters; after meta-training, pass the meta-trained ones as the state."""
        del y
        return self.init_params(key, x)

    def update(self, state: dict, batch: StreamBatch, key: jax.Array) -> tuple[dict, dict]:
        """Learn the batch one example at a time, head only (``state`` is the parameter dict)."""
        del key
        loss, metrics = losses.resolve(self.objective, batch.y)(self.predict(state, batch.x), batch.y)
        return self.learn_online(state, batch.x, batch.y), {"loss": loss, **metrics}


@register("oml", family="continual")
def _oml(spec: Spec, *, reset: bool = True) -> OML:
    """OML with ``spec.network(None)`` as representation and ``spec.head(outputs)`` learned online at ``inner_lr``."""
    return OML(spec.network(None), spec.head(spec.outputs), inner_lr=spec.inner_lr, reset=reset)
