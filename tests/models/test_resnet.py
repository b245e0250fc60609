"""ResNet-12: shapes, the two convolution formulations agree, MAML meta-gradients are finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import losses, models

SMALL = (2, 3, 4, 4)


def test_shapes_and_parameter_count():
    x = jnp.zeros((3, 16, 16, 3))  # the weights do not depend on the image size
    net = models.ResNet12(out=5)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)
    assert jax.eval_shape(net.apply, shapes, x).shape == (3, 5)
    # 3 convs + a 1x1 shortcut per block, no biases, plus the head: ~12.4M weights, as in MetaOptNet.
    count = sum(p.size for p in jax.tree.leaves(shapes))
    assert 12_000_000 < count < 12_600_000, count
    small = models.ResNet12(channels=SMALL)
    assert small.apply(small.init(jax.random.key(0), x), x).shape == (3, SMALL[-1])


def test_patches_equal_xla():
    x = jax.random.normal(jax.random.key(1), (4, 21, 21, 3))
    xla, patches = models.ResNet12(SMALL, out=3, impl="xla"), models.ResNet12(SMALL, out=3, impl="patches")
    params = xla.init(jax.random.key(2), x)
    np.testing.assert_allclose(xla.apply(params, x), patches.apply(params, x), rtol=1e-4, atol=1e-4)


def test_maml_meta_gradient_is_finite():
    net = models.ResNet12(SMALL, out=2, impl="xla")
    learner = metajax.MAML(net, inner_lr=0.1, objective=losses.cross_entropy)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    y = jnp.array([0, 1])
    episode = metajax.Episode(x, y, x, y)
    params = learner.init(jax.random.key(4), episode)
    grads = jax.grad(lambda p: learner.loss(p, episode, jax.random.key(5))[0])(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(("kwargs", "message"), [(dict(channels=(4, 4)), "4 block widths"), (dict(impl="fft"), "impl")])
def test_bad_configuration(kwargs, message):
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match=message):
        models.ResNet12(**kwargs).init(jax.random.key(0), x)
