"""Conv4's convolution formulations compute the same function; mixed precision stays close to f32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import metajax
from metajax import losses, models, tasks
from metajax.models.conv import conv_function, default_conv_impl, patch_conv, reshape_max_pool


@pytest.mark.parametrize(
    ("size", "channels", "stride", "padding"),
    [
        (28, 1, 2, "SAME"),
        (7, 6, 2, "SAME"),
        (4, 3, 2, "SAME"),
        (9, 3, 1, "SAME"),
        (9, 4, 1, "VALID"),
        (10, 2, 2, ((1, 2), (0, 1))),
    ],
)
def test_patch_conv_equals_xla_convolution(size, channels, stride, padding):
    x = jax.random.normal(jax.random.key(0), (3, size, size, channels))
    w = jax.random.normal(jax.random.key(1), (3, 3, channels, 5))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    expected = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn)
    np.testing.assert_allclose(
        patch_conv(x, w, (stride, stride), padding, dimension_numbers=dn), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("size", [28, 7, 4, 5])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_reshape_max_pool_equals_flax_max_pool(size, ties):
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
    if ties:  # three values only: most windows hold their maximum twice or more; the first one gets the gradient
        x = jnp.round(x)
    np.testing.assert_array_equal(reshape_max_pool(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))
    g1 = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(reshape_max_pool(x)))))(x)
    g2 = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME"))))(x)
    np.testing.assert_allclose(g1, g2, rtol=1e-6)


def test_patch_conv_rejects_what_it_does_not_support():
    x, w = jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match="feature groups"):
        patch_conv(x, w, (1, 1), "SAME", feature_group_count=2)
    with pytest.raises(ValueError, match="rhs_dilation"):
        patch_conv(x, w, (1, 1), "SAME", rhs_dilation=(2, 2))
    with pytest.raises(ValueError, match="NHWC"):
        patch_conv(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _maml(impl, pool="stride", dtype=None, order=None):
    net = models.Conv4(filters=8, out=3, pool=pool, impl=impl, dtype=dtype)
    order = metajax.SecondOrder() if order is None else order
    return metajax.MAML(net, inner_lr=0.4, inner_steps=2, meta_gradient=order, objective=losses.cross_entropy)


def _episodes(n=2):
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 28, 28, 1), dtype=np.uint8)
    return tasks.FewShot(images, ways=3, shots=1, queries=2).sample(jax.random.key(0), n)


@pytest.mark.parametrize(
    ("pool", "order", "impl"),
    [
        ("max", metajax.SecondOrder(), "patches"),
        ("stride", metajax.FirstOrder(), "patches"),
        ("max", metajax.FirstOrder(), "mixed"),
    ],  # fmt: skip
    ids=["max-second-patches", "stride-first-patches", "max-first-mixed"],
)
def test_conv4_formulations_match_xla_in_maml_meta_gradient(pool, order, impl):
    episodes = _episodes()
    xla, patches = _maml("xla", pool, order=order), _maml(impl, pool, order=order)
    one = jax.tree.map(lambda a: a[0], episodes)
    params = xla.init(jax.random.key(1), one)
    patches_shapes = jax.tree.map(jnp.shape, patches.init(jax.random.key(1), one))
    assert jax.tree.map(jnp.shape, params) == patches_shapes  # same parameter layout

    def meta_grad(learner):
        def batch(p):
            losses_, _ = jax.vmap(learner.loss, in_axes=(None, 0, 0))(
                p, episodes, jax.random.split(jax.random.key(2), 2)
            )
            return jnp.mean(losses_)

        return jax.jit(jax.value_and_grad(batch))(params)

    (l1, g1), (l2, g2) = meta_grad(xla), meta_grad(patches)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5), g1, g2)


@pytest.mark.parametrize(
    ("bn", "extra"),
    [("transductive", {}), ("support", {}), ("per_step", {"bn_steps": 2}), ("running", {})],
)
def test_pooled_batch_norm_equals_normalise_relu_then_pool(bn, extra):
    """Conv4's max-pooled blocks normalise after pooling unless impl="xla"; same values and gradients.

    Batch-norm scales are drawn with both signs (a negative scale pools the minimum), and the
    images are binary with blank regions, as Omniglot's, so windows hold exact ties.
    """
    rng = np.random.default_rng(0)
    x = jnp.asarray((rng.random((6, 28, 28, 1)) > 0.8) * np.tri(28)[None, :, :, None], jnp.float32)
    context = x[:2] if bn == "support" else None
    nets = {impl: models.Conv4(filters=4, out=3, bn=bn, impl=impl, **extra) for impl in ("xla", "patches")}
    variables = nets["xla"].init(jax.random.key(0), x)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.asarray(rng.standard_normal(v.shape), v.dtype) if "scale" in str(path) else v,
        variables["params"],
    )
    running = {"batch_stats": variables["batch_stats"]} if bn == "running" else {}
    calls = [{}] + ([{"use_running_average": True}] if bn == "running" else [])
    for kwargs in calls:

        def f(impl, p, x, kwargs=kwargs):
            out = nets[impl].apply({"params": p, **running}, x, context=context, step=1, **kwargs)
            return jnp.sum(jnp.sin(out))

        def second_order(fn):  # the gradient of a function of the gradient, as MAML's meta-gradient
            return jax.grad(lambda p, x: jnp.sum(jax.grad(fn)(p, x)["Dense_0"]["kernel"]))

        for derivative in (jax.value_and_grad, second_order):
            expected = jax.jit(derivative(lambda p, x: f("xla", p, x)))(params, x)
            got = jax.jit(derivative(lambda p, x: f("patches", p, x)))(params, x)
            # Within float rounding of the largest entry: the conv biases' gradients are zero
            # in exact arithmetic (batch norm removes them) and rounding noise here.
            scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(expected))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_only_patches_computes_convolutions_as_patches():
    assert conv_function("patches") is patch_conv
    assert conv_function("mixed") is None and conv_function("xla") is None


def test_conv4_impl_default_and_validation():
    cpu = jax.default_backend() == "cpu"
    assert default_conv_impl() == ("patches" if cpu else "xla")
    assert default_conv_impl(shared_weights=True) == ("mixed" if cpu else "xla")
    with pytest.raises(ValueError, match="Conv4.impl must be one of 'xla', 'patches', 'mixed'"):
        models.Conv4(filters=4, impl="cudnn").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


# Mixed precision: bf16 has an 8-bit significand (relative rounding 2^-8 = 0.4%). Through four
# conv blocks, two inner steps of lr 0.4 and the query pass the query loss stays within 5% of
# float32 (measured: 2.0% for Conv4, 0.2% for the sinusoid MLP).
BF16_LOSS_RTOL = 5e-2


@pytest.mark.parametrize("kind", ["conv4-maml", "mlp-maml"])
def test_bfloat16_compute_keeps_float32_params_and_loss_close_to_float32(kind):
    if kind == "conv4-maml":
        episodes = _episodes(4)
        f32, bf16 = _maml("xla"), _maml("xla", dtype=jnp.bfloat16)
    else:
        episodes = tasks.Sinusoid(shots=10).sample(jax.random.key(0), 4)
        f32 = metajax.MAML(models.MLP(hidden=(40, 40)), inner_lr=0.01)
        bf16 = metajax.MAML(models.MLP(hidden=(40, 40), dtype=jnp.bfloat16), inner_lr=0.01)
    one = jax.tree.map(lambda a: a[0], episodes)
    params = f32.init(jax.random.key(1), one)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(bf16.init(jax.random.key(1), one)))
    keys = jax.random.split(jax.random.key(2), 4)

    def loss_and_grad(learner):
        fn = lambda p: jnp.mean(jax.vmap(learner.loss, in_axes=(None, 0, 0))(p, episodes, keys)[0])
        return jax.jit(jax.value_and_grad(fn))(params)

    (l32, g32), (l16, g16) = loss_and_grad(f32), loss_and_grad(bf16)
    assert l16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    np.testing.assert_allclose(l16, l32, rtol=BF16_LOSS_RTOL)
    cos = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True)) / (
        jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(g16)))
        * jnp.sqrt(sum(jnp.vdot(b, b) for b in jax.tree.leaves(g32)))
    )
    assert cos > 0.85, float(cos)  # measured 0.92 (Conv4-8, 2 inner steps), ~1.0 for the MLP
