"""Process-wide settings of the ``metajax`` application's processes; the library never sets them.

:func:`configure` is called first by every entry point that runs steps (``metajax``,
``python -m metajax.app.bench`` and its workers, ``scripts/reproduce_fewshot.py``), and
:func:`settings` goes into every benchmark record and ``metrics.json`` machine record.
"""

from __future__ import annotations

from metajax.app import host_memory, xla_conv


def configure() -> dict[str, str]:
    """Keep freed host memory and use XLA's own CPU convolutions; call before JAX starts its backend.

    :mod:`~metajax.app.host_memory` and :mod:`~metajax.app.xla_conv` say what each does. Returns :func:`settings`.
    """
    host_memory.retain_freed_memory()
    xla_conv.use_xla_convolutions()
    return settings()


def settings() -> dict[str, str]:
    """``{"host_malloc": "retain" | "default", "xla_conv": "xla" | "default"}`` of this process."""
    return {"host_malloc": host_memory.setting(), "xla_conv": xla_conv.setting()}
