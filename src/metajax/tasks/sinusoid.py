"""Sinusoid regression, the protocol of MAML (Finn et al., 2017, section 5.1)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from metajax._checks import check_positive_int, check_range
from metajax.episode import Episode


@dataclasses.dataclass(frozen=True)
class Sinusoid:
    """Tasks ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, ``x ~ U[-5, 5]``.

    Each task has ``shots`` support points and ``queries`` query points, drawn
    independently. The MAML paper uses ``K`` of each (``queries=None`` means equal to
    ``shots``).

    Attributes:
        shots: support points per task (``K``).
        queries: query points per task; ``None`` for ``shots``.
        amplitude: range of the amplitude.
        phase: range of the phase.
        x_range: range of the inputs.

    Example:
        >>> import jax
        >>> ep = Sinusoid(shots=5).sample(jax.random.key(0), 3)
        >>> ep.support_x.shape, ep.query_y.shape
        ((3, 5, 1), (3, 5, 1))
    """

    shots: int = 10
    queries: int | None = None
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    kind = "regression"

    def __post_init__(self):
        check_positive_int("shots", self.shots)
        if self.queries is not None:
            check_positive_int("queries", self.queries)
        for name in ("amplitude", "phase", "x_range"):
            check_range(name, getattr(self, name))

    @property
    def num_query(self) -> int:
        """Query points per task."""
        return self.shots if self.queries is None else self.queries

    def sample(self, key: jax.Array, num_tasks: int) -> Episode:
        """Draw ``num_tasks`` tasks; arrays are ``[num_tasks, shots or queries, 1]`` float32."""
        check_positive_int("num_tasks", num_tasks)
        amp, phase, k_x = self._functions(key, num_tasks)
        n = self.shots + self.num_query
        x = jax.random.uniform(k_x, (num_tasks, n, 1), minval=self.x_range[0], maxval=self.x_range[1])
        y = amp * jnp.sin(x - phase)
        return Episode(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :])

    def curve(self, key: jax.Array, num_tasks: int, x: jax.Array) -> jax.Array:
        """The true functions of the tasks ``sample(key, num_tasks)`` would draw, at points ``x``.

        Args:
            key: the same key passed to ``sample``.
            num_tasks: the same number of tasks.
            x: ``[points, 1]``.

        Returns:
            ``[num_tasks, points, 1]``.
        """
        amp, phase, _ = self._functions(key, num_tasks)
        return amp * jnp.sin(x[None] - phase)

    def _functions(self, key: jax.Array, num_tasks: int):
        """Amplitudes and phases ``[num_tasks, 1, 1]`` and the key left for the inputs."""
        k_amp, k_phase, k_x = jax.random.split(key, 3)
        shape = (num_tasks, 1, 1)
        amp = jax.random.uniform(k_amp, shape, minval=self.amplitude[0], maxval=self.amplitude[1])
        phase = jax.random.uniform(k_phase, shape, minval=self.phase[0], maxval=self.phase[1])
        return amp, phase, k_x
