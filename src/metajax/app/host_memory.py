"""The host allocator of the ``metajax`` processes: keep freed memory for the next step.

XLA on CPU allocates a compiled step's temporaries afresh on every call (tens to hundreds
of MB for a Conv4 episode). glibc's malloc serves blocks that large with fresh ``mmap``
mappings and unmaps them when freed, so every step page-faults its working set in again.
On the 2-core benchmark ProtoNet 5-way 1-shot ran 13.0-16.3 episodes/s so and 16.5-19.5
with freed memory kept; PyTorch's steps gain as much or more (docs/performance.md, "The
host allocator"). The application's entry points (``metajax``, ``python -m
metajax.app.bench`` and its workers, ``scripts/reproduce_fewshot.py``) therefore turn
mapped chunks off and raise the trim threshold, so freed blocks stay in the heap and are
reused. The library never calls this: a process-wide setting is the application's choice.
``METAJAX_MALLOC=default`` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import platform

from metajax.app.switches import switch

ENV = "METAJAX_MALLOC"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept before returning memory to the kernel

_state = {"setting": "default"}


def retain_freed_memory() -> str:
    """Make glibc's malloc keep freed host memory for reuse (once per process; later calls only report).

    Returns:
      ``"retain"`` when set (no mapped chunks, trim threshold 2 GiB), else ``"default"``:
      ``METAJAX_MALLOC=default``, a C library other than glibc, or ``mallopt`` refused.

    Raises:
      ValueError: ``METAJAX_MALLOC`` is neither ``retain`` nor ``default``.
    """
    choice = switch(ENV, "retain", "keep freed host memory")
    if _state["setting"] == "retain" or choice == "default" or platform.libc_ver()[0] != "glibc":
        return _state["setting"]
    libc = ctypes.CDLL(None)
    if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _state["setting"] = "retain"
    return _state["setting"]


def setting() -> str:
    """What this process's allocator was set to: ``"retain"`` or ``"default"``."""
    return _state["setting"]
