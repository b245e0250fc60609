"""The task interfaces: distributions sampled on the device, and feeds of episodes made off it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class EpisodeFeed(Protocol):
    """Episodes made off the device, a batch per meta-step (a host pipeline, e.g. :class:`~metajax.tasks.HostEpisodes`).

    The trainer takes a feed wherever it takes a :class:`TaskDistribution`: it pulls one
    batch per meta-step with ``next`` and passes it into the jitted step, where
    ``assemble(batch, key)`` turns it into the batched :class:`~metajax.episode.Episode`
    the learner sees. ``position`` counts the batches served; ``get_state`` and
    ``set_state`` save and restore it (JSON-able), so a checkpoint continues the stream.

    Attributes:
        kind: ``"regression"`` or ``"classification"``, as for a task distribution.
        tasks_per_step: episodes per batch (the trainer's ``meta_batch``).
        assemble: a hashable, traceable ``(batch, key) -> Episode`` with a leading
            ``[tasks_per_step]`` axis; the same value for feeds of one configuration.
        position: batches served so far (meta-steps fed).
    """

    kind: str
    tasks_per_step: int
    assemble: Callable[[Any, jax.Array], Episode]

    @property
    def position(self) -> int:
        """Batches served so far."""
        ...

    def example(self) -> Any:
        """A batch like the ones ``next`` returns, without advancing the stream (to shape parameters)."""
        ...

    def __next__(self) -> Any:
        """The next meta-step's batch."""
        ...

    def get_state(self) -> dict:
        """The stream's position, JSON-able."""
        ...

    def set_state(self, state: dict) -> None:
        """Continue the stream from a position ``get_state`` returned."""
        ...
