"""Real data as class-major uint8 arrays ``[classes, examples, H, W, C]``, ready for :class:`metajax.tasks.FewShot`.

Data lives under ``root`` (an argument), else ``$METAJAX_DATA``, else ``~/.cache/metajax``;
decoded arrays are cached under ``cache_dir``, else ``$METAJAX_CACHE``, else
``~/.cache/metajax/cache``.
"""

from metajax.datasets._files import ImageClasses, cache_root, data_root
from metajax.datasets.fashion_mnist import load_fashion_mnist
from metajax.datasets.miniimagenet import SPLITS as MINIIMAGENET_SPLITS
from metajax.datasets.miniimagenet import load_miniimagenet
from metajax.datasets.omniglot import SPLITS as OMNIGLOT_SPLITS
from metajax.datasets.omniglot import load_omniglot

__all__ = [
    "ImageClasses",
    "data_root",
    "cache_root",
    "load_omniglot",
    "load_miniimagenet",
    "load_fashion_mnist",
    "OMNIGLOT_SPLITS",
    "MINIIMAGENET_SPLITS",
]
