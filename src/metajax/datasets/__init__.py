"""Real data as uint8 image arrays, ready for :class:`metajax.tasks.FewShot` or :class:`metajax.tasks.RaggedFewShot`.

Datasets of equal class sizes load as ``ImageClasses`` (``[classes, examples, H, W, C]``),
those of unequal sizes (CUB, tieredImageNet, your own folders) as ``RaggedImageClasses``
(``[total, H, W, C]`` with per-class ``counts``); :func:`metajax.tasks.from_images` turns
either into a task distribution. Data lives under ``root`` (an argument), else
``$METAJAX_DATA``, else ``~/.cache/metajax``; decoded arrays are cached under
``cache_dir``, else ``$METAJAX_CACHE``, else ``~/.cache/metajax/cache``, in a folder per data
root (:func:`cache_folder`).
"""

from metajax.datasets._files import ImageClasses, RaggedImageClasses, cache_folder, cache_root, data_root
from metajax.datasets.cifar import CIFAR_FS_CLASSES, FC100_SUPERCLASSES, load_cifar_fs, load_fc100
from metajax.datasets.cub import load_cub
from metajax.datasets.fashion_mnist import load_fashion_mnist
from metajax.datasets.folder import load_image_folder
from metajax.datasets.miniimagenet import SPLITS as MINIIMAGENET_SPLITS
from metajax.datasets.miniimagenet import load_miniimagenet
from metajax.datasets.omniglot import SPLITS as OMNIGLOT_SPLITS
from metajax.datasets.omniglot import load_omniglot
from metajax.datasets.tiered_imagenet import load_tiered_imagenet

__all__ = [
    "ImageClasses",
    "RaggedImageClasses",
    "data_root",
    "cache_root",
    "cache_folder",
    "load_omniglot",
    "load_miniimagenet",
    "load_tiered_imagenet",
    "load_cifar_fs",
    "load_fc100",
    "load_cub",
    "load_image_folder",
    "load_fashion_mnist",
    "OMNIGLOT_SPLITS",
    "MINIIMAGENET_SPLITS",
    "CIFAR_FS_CLASSES",
    "FC100_SUPERCLASSES",
]
