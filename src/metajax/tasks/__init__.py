"""Task distributions: ``sample(key, num_tasks) -> Episode`` with a leading task axis.

:class:`FewShot` draws classification episodes from classes of equal size,
:class:`RaggedFewShot` from classes of different sizes; :func:`benchmark` builds the
standard few-shot benchmarks from their files, :func:`from_images` any loaded dataset
(your own image folders through :func:`metajax.datasets.load_image_folder`).

Every distribution draws its episodes on the device from a PRNG key, so the trainer
samples inside the jitted meta-step. For datasets larger than the device,
:class:`HostEpisodes` draws the same episodes on CPU workers (Grain) and feeds them to the
step: an :class:`EpisodeFeed`, which the trainer takes in place of a distribution.
:mod:`metajax.tasks.trajectories` holds OML's meta-training distributions; the
continual-learning streams are :mod:`metajax.tasks.sequences` (a fixed sequence of tasks,
:class:`TaskSequence`) and :mod:`metajax.tasks.lifelong` (an OSAKA-style schedule over a
pool of tasks).
"""

from metajax.tasks.base import EpisodeFeed, TaskDistribution
from metajax.tasks.benchmarks import BENCHMARK_SPLITS, Benchmark, benchmark, benchmark_images, from_images
from metajax.tasks.fewshot import FewShot
from metajax.tasks.host import HostEpisodes, ImageFiles
from metajax.tasks.lifelong import NEW, OOD, SEEN, LifelongStream, Schedule, draw_batch
from metajax.tasks.ragged import RaggedFewShot
from metajax.tasks.sequences import TaskSequence, class_incremental, domain_incremental, incremental_sine, rotate
from metajax.tasks.sinusoid import Sinusoid
from metajax.tasks.trajectories import SineTrajectories, Trajectories

__all__ = [
    "TaskDistribution",
    "EpisodeFeed",
    "Sinusoid",
    "FewShot",
    "RaggedFewShot",
    "benchmark",
    "benchmark_images",
    "Benchmark",
    "BENCHMARK_SPLITS",
    "from_images",
    "HostEpisodes",
    "ImageFiles",
    "Trajectories",
    "SineTrajectories",
    "TaskSequence",
    "class_incremental",
    "domain_incremental",
    "incremental_sine",
    "rotate",
    "SEEN",
    "NEW",
    "OOD",
    "Schedule",
    "LifelongStream",
    "draw_batch",
]
