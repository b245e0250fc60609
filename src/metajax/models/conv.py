"""Convolutional backbones for few-shot image classification."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from metajax.models.layers import batch_norm, check_bn, stack_context

CONV_IMPLS = ("xla", "patches", "mixed")

# "mixed" computes a convolution with at most this many input channels (the image layer) as
# patches x matmul and every wider one with XLA's convolution.
MIXED_PATCH_CHANNELS = 3


def default_conv_impl() -> str:
    """The convolution formulation that is fastest on the default backend: ``"xla"`` or ``"patches"``.

    On XLA's CPU backend a convolution whose weights differ per task (MAML's adapted
    weights under ``vmap``) becomes a grouped convolution, and second-order gradients
    through convolutions lower to slow generic loops; written as shifted slices times one
    matmul (:func:`patch_conv`) the same network is several times faster there (see
    ``docs/performance.md`` for the measured table). Accelerators have fast native
    convolutions, so they keep ``"xla"``.
    """
    return "patches" if jax.default_backend() == "cpu" else "xla"


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


def conv_function(impl: str, in_channels: int):
    """The ``conv_general_dilated`` of a ``flax.linen.Conv`` with ``in_channels`` inputs under ``impl``.

    :func:`patch_conv` for ``"patches"``, and for ``"mixed"`` when ``in_channels`` is at most
    :data:`MIXED_PATCH_CHANNELS`; ``None`` (XLA's convolution) otherwise.
    """
    if impl == "patches" or (impl == "mixed" and in_channels <= MIXED_PATCH_CHANNELS):
        return patch_conv
    return None


def max_pool(impl: str, x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2, ``SAME``: :func:`reshape_max_pool` unless ``impl`` is ``"xla"``."""
    if impl == "xla":
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    return reshape_max_pool(x)


def reshape_max_pool(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 and ``SAME`` padding, as a reshape, an argmax and a select.

    Equals ``flax.linen.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")`` on
    ``[N, H, W, C]`` (odd sides padded at the end with ``-inf``, as ``SAME`` does), and its
    gradient goes to the first maximum of each window, as ``reduce_window``'s does. That
    gradient is an elementwise select, where ``reduce_window``'s is a select-and-scatter that
    XLA's CPU backend runs about 3x slower. The window's maximum is chosen once by
    ``argmax``: ``jnp.max``'s own gradient finds it again by comparing values for equality,
    which breaks under ``jit`` when XLA recomputes the input in two fusions with different
    rounding (gradients then silently vanish from some windows).
    """
    n, h, w, c = x.shape
    ph, pw = (-h) % 2, (-w) % 2
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    r = x.reshape(n, (h + ph) // 2, 2, (w + pw) // 2, 2, c)
    windows = jnp.stack([r[:, :, i, :, j] for i in range(2) for j in range(2)], axis=-1)  # [N, H/2, W/2, C, 4]
    first_max = jnp.argmax(windows, axis=-1)[..., None] == jnp.arange(4).reshape(1, 1, 1, 1, 4)
    return jnp.sum(jnp.where(first_max, windows, jnp.zeros((), x.dtype)), axis=-1)


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
        impl: how convolutions and pooling are computed: ``"xla"``
            (``lax.conv_general_dilated`` and ``reduce_window`` max-pooling), ``"patches"``
            (:func:`patch_conv`, slices x matmul, and :func:`reshape_max_pool`), ``"mixed"``
            (patches for the image layer, XLA's convolution for the wider ones,
            :func:`reshape_max_pool`; on CPU measured faster than ``"patches"`` for 5-way
            ProtoNets with one episode per step, slower for 20-way and Matching Networks, and
            several times slower inside a loop, see ``docs/performance.md``) or ``None`` for
            :func:`default_conv_impl` of the backend. Same parameters and the same function
            either way (to float rounding); only the speed differs.
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
        for _ in range(4):
            conv = conv_function(impl, x.shape[-1])
            x = nn.Conv(
                self.filters, (3, 3), strides=stride, padding="SAME", dtype=self.dtype, conv_general_dilated=conv
            )(x)
            x = nn.relu(norm()(x, context_rows=rows, step=step, use_running_average=use_running_average))
            if self.pool == "max":
                x = max_pool(impl, x)
        x = x[rows:].reshape(x.shape[0] - rows, -1)
        if self.out is not None:
            x = nn.Dense(self.out, dtype=self.dtype)(x)
        return x.astype(jnp.float32) if self.dtype is not None else x
