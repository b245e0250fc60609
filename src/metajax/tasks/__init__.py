"""Task distributions: ``sample(key, num_tasks) -> Episode`` with a leading task axis.

Every distribution draws its episodes on the device from a PRNG key, so the trainer
samples inside the jitted meta-step.
"""

from metajax.tasks.base import TaskDistribution
from metajax.tasks.fewshot import FewShot, benchmark
from metajax.tasks.sinusoid import Sinusoid

__all__ = ["TaskDistribution", "Sinusoid", "FewShot", "benchmark"]
