"""The task-distribution interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax

from metajax.episode import Episode


@runtime_checkable
class TaskDistribution(Protocol):
    """What the trainer and evaluation need from a family of tasks.

    ``sample`` must be a pure function of the key, traceable under ``jax.jit`` with a
    static ``num_tasks``, and return shapes that depend only on the configuration.
    ``kind`` is ``"regression"`` or ``"classification"``: it picks the default
    objective (MSE or cross-entropy) and the metric reported.
    """

    kind: str

    def sample(self, key: jax.Array, num_tasks: int) -> Episode:
        """Draw ``num_tasks`` episodes: every array has a leading ``[num_tasks]`` axis."""
        ...
