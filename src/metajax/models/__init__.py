"""Pure-function backbones (flax.linen): ``model.apply({"params": p}, x)``.

Batch normalisation is a mode of the model (``bn`` of Conv4 and ResNet-12, see
``metajax.models.layers.BN_MODES``): by default MAML's statistics of the current batch,
no running averages, so every model is a pure function of ``(params, x)``; with
``bn="running"`` the moving averages are a second collection, ``"batch_stats"``. Flax NNX and
equinox modules get the same two functions from :func:`from_nnx` and :func:`from_equinox`
(:mod:`metajax.models.adapters`).
"""

from metajax.models.adapters import PureModel, as_model, from_equinox, from_nnx
from metajax.models.conv import Conv4
from metajax.models.layers import BatchStatNorm
from metajax.models.mlp import MLP
from metajax.models.resnet import ResNet12

__all__ = ["MLP", "Conv4", "ResNet12", "BatchStatNorm", "PureModel", "as_model", "from_equinox", "from_nnx"]
