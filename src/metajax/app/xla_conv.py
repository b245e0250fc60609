"""XLA's CPU convolutions in the ``metajax`` processes: XLA's own kernels, not YNNPACK's.

jaxlib 0.10 hands each convolution on CPU to YNNPACK (a ``__ynn_fusion``). For the
Conv4 of ProtoNets and Matching Networks XLA's own convolution kernels are faster: the
gradient of the max-pooled Conv4-64 over 80 Omniglot images took 84-88 ms with YNNPACK's
convolutions and 59-70 ms with XLA's (320 images: 381 and 258 ms) on the 2-core benchmark
machine, and the benchmark's metric learners gain as much (docs/performance.md, "XLA's
convolutions on CPU"). Dots, reductions and elementwise fusions stay with YNNPACK: turning
it off altogether made MAML two to three times slower.

The setting is a process-wide XLA flag, read when JAX starts its backend, so it is the
application's choice (``metajax``, ``python -m metajax.app.bench`` and its workers,
``scripts/reproduce_fewshot.py``); the library never sets it. It is added only on jaxlib
versions where the flag was checked to exist (:data:`TESTED`: XLA stops the process on an
unknown flag), only when ``XLA_FLAGS`` does not already choose YNNPACK's fusions, and only
before the backend starts. ``METAJAX_XLA_CONV=default`` keeps jaxlib's choice.
"""

from __future__ import annotations

import os

import jaxlib
from jax._src import xla_bridge  # private: whether a backend has already read XLA_FLAGS

from metajax.app.switches import switch

ENV = "METAJAX_XLA_CONV"
FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
TESTED = ("0.10.",)  # jaxlib release series whose XLA knows FLAG


def use_xla_convolutions() -> str:
    """Add :data:`FLAG` to ``XLA_FLAGS`` before JAX starts its backend (once per process; later calls only report).

    Returns:
      :func:`setting`: ``"default"`` when the flag was not added: ``METAJAX_XLA_CONV=default``,
      a jaxlib outside :data:`TESTED`, ``XLA_FLAGS`` already setting
      ``xla_cpu_experimental_ynn_fusion_type``, or a backend already started.

    Raises:
      ValueError: ``METAJAX_XLA_CONV`` is neither ``xla`` nor ``default``.
    """
    choice = switch(ENV, "xla", "XLA's own CPU convolutions")
    flags = os.environ.get("XLA_FLAGS", "")
    if (
        choice == "xla"
        and jaxlib.__version__.startswith(TESTED)
        and "xla_cpu_experimental_ynn_fusion_type" not in flags
        and not xla_bridge.backends_are_initialized()
    ):
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return setting()


def setting() -> str:
    """``"xla"`` when ``XLA_FLAGS`` holds :data:`FLAG` (added here or by a parent process), else ``"default"``."""
    return "xla" if FLAG in os.environ.get("XLA_FLAGS", "").split() else "default"
