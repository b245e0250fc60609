"""Convolutional backbones for few-shot image classification."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from metajax.models.layers import batch_norm, check_bn, stack_context

CONV_IMPLS = ("xla", "patches", "mixed")


def default_conv_impl(shared_weights: bool = False) -> str:
    """The formulation that is fastest on the default backend: ``"xla"``, ``"patches"`` or ``"mixed"``.

    On XLA's CPU backend a convolution whose weights differ per task (MAML's adapted
    weights under ``vmap``) becomes a grouped convolution, and gradients of XLA's
    convolutions inside a loop body (``lax.map`` over tasks) and second-order gradients
    lower to slow generic loops; written as shifted slices times one matmul
    (:func:`patch_conv`) the same network is several times faster there. Where every task
    shares the weights (``shared_weights``: ProtoNets, Matching Networks, the attention
    learners, one episode per dispatch), XLA's own convolution is faster than patches, and
    ``"mixed"`` keeps it beside the slice-based pooling. Measured in
    ``docs/performance.md``. Accelerators have fast native convolutions, so they keep
    ``"xla"``.
    """
    if jax.default_backend() != "cpu":
        return "xla"
    return "mixed" if shared_weights else "patches"


def patch_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    precision: lax.PrecisionLike = None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` for NHWC inputs and HWIO kernels as patches x one matmul (im2col).

    The ``kh * kw`` shifted (strided) slices of the padded input are concatenated along
    channels, ``[N, OH, OW, kh*kw*C]``, in the row order of ``rhs.reshape(kh*kw*C, F)``,
    and multiplied by it. Same arithmetic as the convolution up to float summation order;
    its derivatives are slices, pads and matmuls, which batch over tasks as batched
    matmuls instead of grouped convolutions. A drop-in for ``flax.linen.Conv``'s
    ``conv_general_dilated`` argument; dilation and feature groups are not supported.

    Args:
        lhs: ``[N, H, W, C]``.
        rhs: ``[kh, kw, C, F]``.
        window_strides: ``(sh, sw)``.
        padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``.

    Returns:
        ``[N, OH, OW, F]``.
    """
    if lhs.ndim != 4 or rhs.ndim != 4:
        raise ValueError(
            f"patch_conv expects lhs [N, H, W, C] and rhs [kh, kw, C, F], got {lhs.shape} and {rhs.shape}."
        )
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if dimension_numbers is not None and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        raise ValueError(f"patch_conv supports NHWC inputs and HWIO kernels only, got {dimension_numbers}.")
    for name, dilation in (("lhs_dilation", lhs_dilation), ("rhs_dilation", rhs_dilation)):
        if dilation is not None and any(d != 1 for d in dilation):
            raise ValueError(f"patch_conv does not support {name}, got {dilation}.")
    if feature_group_count != 1:
        raise ValueError(f"patch_conv does not support feature groups, got feature_group_count={feature_group_count}.")
    n, h, w, c = lhs.shape
    kh, kw, _, f = rhs.shape
    sh, sw = window_strides
    pads = lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
    x = jnp.pad(lhs, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    oh = (x.shape[1] - kh) // sh + 1
    ow = (x.shape[2] - kw) // sw + 1
    cols = [
        lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c), (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1).reshape(n * oh * ow, kh * kw * c)
    out = jnp.dot(
        patches, rhs.reshape(kh * kw * c, f), precision=precision, preferred_element_type=preferred_element_type
    )
    return out.reshape(n, oh, ow, f)


def check_impl(owner: str, impl: str | None) -> str:
    """``impl``, or :func:`default_conv_impl` for ``None``.

    Raises ``ValueError`` naming ``owner.impl`` unless the choice is in :data:`CONV_IMPLS`.
    """
    chosen = default_conv_impl() if impl is None else impl
    if chosen not in CONV_IMPLS:
        raise ValueError(f"{owner}.impl must be one of {', '.join(map(repr, CONV_IMPLS))} or None, got {impl!r}.")
    return chosen


def conv_function(impl: str):
    """The ``conv_general_dilated`` of a ``flax.linen.Conv`` under ``impl``: :func:`patch_conv` for ``"patches"``.

    ``None`` (XLA's convolution) for ``"xla"`` and ``"mixed"``.
    """
    return patch_conv if impl == "patches" else None


def max_pool(impl: str, x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2, ``SAME``: :func:`reshape_max_pool` unless ``impl`` is ``"xla"``."""
    if impl == "xla":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    return reshape_max_pool(x)


def reshape_max_pool(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 and ``SAME`` padding, as a reshape, comparisons and a masked sum.

    Equals ``flax.linen.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")`` on
    ``[N, H, W, C]`` (odd sides padded at the end with ``-inf``, as ``SAME`` does), and its
    gradient goes to the first maximum of each window (row-major), as ``reduce_window``'s
    does. The window's four values are compared pairwise for the position of the first
    maximum, and the output is the sum over the window of the values at that position:
    one elementwise pass forward, and a gradient that is one elementwise select at full
    size, where ``reduce_window``'s is a select-and-scatter that XLA's CPU backend runs about
    3x slower (stacking the four values for an ``argmax``, or slicing them out, costs extra
    full-size copies forward or backward). The position is computed once (not differentiated),
    so each window's gradient reaches exactly one input even if XLA recomputes the inputs
    with different rounding in another fusion (``jnp.max``'s gradient, which compares the
    inputs with the output for equality, can then vanish).
    """
    n, h, w, c = x.shape
    ph, pw = (-h) % 2, (-w) % 2
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    r = x.reshape(n, (h + ph) // 2, 2, (w + pw) // 2, 2, c)
    a, b, c_, d = r[:, :, 0, :, 0], r[:, :, 0, :, 1], r[:, :, 1, :, 0], r[:, :, 1, :, 1]
    top, bottom = jnp.where(b > a, b, a), jnp.where(d > c_, d, c_)
    first = jnp.where(bottom > top, jnp.where(d > c_, 3, 2), jnp.where(b > a, 1, 0))  # row-major position
    position = jnp.arange(4).reshape(1, 1, 2, 1, 2, 1)
    selected = position == lax.stop_gradient(first)[:, :, None, :, None]
    return jnp.sum(jnp.where(selected, r, jnp.zeros((), x.dtype)), axis=(2, 4))


class Conv4(nn.Module):
    """The four-block convolutional network of MAML, ProtoNets and Matching Networks.

    Each block is a 3x3 convolution with ``filters`` channels, batch normalisation
    (by default with the current batch's statistics; see ``bn``), ReLU and either 2x2 max-pooling (``pool="max"``,
    the miniImageNet and ProtoNets variant) or a stride-2 convolution (``pool="stride"``,
    MAML's Omniglot variant). The blocks are followed by flattening and, when ``out`` is
    set, a linear classifier.

    Attributes:
        filters: channels of every block (64 for Omniglot, 32 for miniImageNet in MAML).
        out: number of output logits, or ``None`` for the flattened embedding.
        pool: ``"max"`` or ``"stride"``.
        impl: how convolutions and pooling are computed: ``"xla"`` (the reference:
            ``lax.conv_general_dilated``, batch norm, ReLU, ``reduce_window`` max-pooling),
            ``"patches"`` (:func:`patch_conv`, slices x matmul; :func:`reshape_max_pool`
            with the batch norm and ReLU applied after pooling, see
            :class:`~metajax.models.layers.BatchStatNorm`'s ``relu_pool``), ``"mixed"``
            (XLA's convolution with that pooling; on CPU the fastest where every task
            shares the weights, and several times slower than ``"patches"`` for per-task
            weights in a loop) or ``None`` for :func:`default_conv_impl` of the backend.
            Same parameters and the same function either way (to float rounding); only
            the speed differs (``docs/performance.md``).
        dtype: computation dtype, e.g. ``jnp.bfloat16`` for mixed precision; parameters
            stay float32, batch statistics are taken in float32, outputs are float32.
        bn: the batch-normalisation mode (``metajax.models.layers.BN_MODES``):
            ``"transductive"`` (statistics of the inputs evaluated together, MAML's),
            ``"support"`` (statistics of ``context``, the support inputs, when given) or
            ``"per_step"`` (a scale and offset per inner step, selected by ``step``) or
            ``"running"`` (batch statistics, whose moving averages are kept in the
            ``"batch_stats"`` collection when it is mutable; ``use_running_average=True``
            normalises with those averages, at evaluation).
        bn_steps: inner steps with their own batch-norm weights (``bn="per_step"``).
        bn_momentum: weight of the old average in each running-average update (``bn="running"``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = Conv4(filters=8, out=5)
        >>> x = jnp.zeros((5, 28, 28, 1))
        >>> params = net.init(jax.random.key(0), x)["params"]
        >>> net.apply({"params": params}, x).shape
        (5, 5)
    """

    filters: int = 64
    out: int | None = None
    pool: str = "max"
    impl: str | None = None
    dtype: jnp.dtype | None = None
    bn: str = "transductive"
    bn_steps: int = 1
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        step: int | jax.Array = 0,
        use_running_average: bool = False,
    ) -> jax.Array:
        """``x``: ``[examples, H, W, C]`` -> ``[examples, out]`` or ``[examples, features]``.

        ``context`` (``bn="support"``): ``[support, H, W, C]`` whose statistics normalise ``x``;
        ``step`` (``bn="per_step"``): the inner step whose batch-norm weights apply;
        ``use_running_average`` (``bn="running"``): normalise with the running statistics.
        """
        check_bn("Conv4", self.bn, self.bn_steps, self.bn_momentum, use_running_average)
        if self.pool not in ("max", "stride"):
            raise ValueError(f"Conv4.pool must be 'max' or 'stride', got {self.pool!r}.")
        impl = check_impl("Conv4", self.impl)
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects inputs [examples, H, W, C], got shape {x.shape}.")
        x, rows = stack_context("Conv4", self.bn, x, context)
        stride = 2 if self.pool == "stride" else 1
        norm = batch_norm(self.bn, self.bn_steps, self.bn_momentum)
        # Every formulation but the reference pools inside the batch norm, before its affine map and the ReLU.
        relu_pool = reshape_max_pool if self.pool == "max" and impl != "xla" else None
        for _ in range(4):
            conv = conv_function(impl)
            x = nn.Conv(
                self.filters, (3, 3), strides=stride, padding="SAME", dtype=self.dtype, conv_general_dilated=conv
            )(x)
            x = norm()(x, context_rows=rows, step=step, use_running_average=use_running_average, relu_pool=relu_pool)
            if relu_pool is None:
                x = nn.relu(x)
                if self.pool == "max":
                    x = max_pool(impl, x)
        x = x[rows:].reshape(x.shape[0] - rows, -1)
        if self.out is not None:
            x = nn.Dense(self.out, dtype=self.dtype)(x)
        return x.astype(jnp.float32) if self.dtype is not None else x
