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
def test_reshape_max_pool_equals_flax_max_pool(size):
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
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


def test_mixed_computes_only_the_image_layer_as_patches():
    assert conv_function("mixed", 1) is patch_conv and conv_function("mixed", 3) is patch_conv
    assert conv_function("mixed", 64) is None and conv_function("xla", 1) is None
    assert conv_function("patches", 64) is patch_conv


def test_conv4_impl_default_and_validation():
    assert default_conv_impl() == ("patches" if jax.default_backend() == "cpu" else "xla")
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
