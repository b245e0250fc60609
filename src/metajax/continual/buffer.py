"""A reservoir replay buffer held on the device: fixed-size arrays, a count, masked sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metajax._checks import check_positive_int


class ReplayBuffer(struct.PyTreeNode):
    """Reservoir memory of ``capacity`` examples (Vitter's algorithm R), as one pytree.

    Slots ``0..min(seen, capacity)-1`` are filled. After ``n`` examples have been offered,
    every one of them is in the buffer with probability ``capacity / n`` (for
    ``n >= capacity``), whatever the order they came in: the property experience replay
    and MER rely on to keep old tasks represented. All operations are pure, traceable and
    keep shapes fixed, so a buffer rides in a ``lax.scan`` carry.

    Attributes:
        x: ``[capacity, *feature_shape]`` stored inputs (zeros where empty).
        y: ``[capacity, *label_shape]`` stored targets.
        seen: int32 scalar, examples offered so far.

    Example:
        >>> buf = ReplayBuffer.create(4, jnp.zeros((2,)), jnp.zeros((), jnp.int32))
        >>> buf = buf.add(jnp.ones((3, 2)), jnp.arange(3), jax.random.key(0))
        >>> int(buf.size)
        3
    """

    x: jax.Array
    y: jax.Array
    seen: jax.Array

    @classmethod
    def create(cls, capacity: int, x_example: jax.Array, y_example: jax.Array) -> ReplayBuffer:
        """An empty buffer for examples shaped like ``x_example`` and ``y_example`` (one example each)."""
        check_positive_int("capacity", capacity)
        x_example, y_example = jnp.asarray(x_example), jnp.asarray(y_example)
        return cls(
            jnp.zeros((capacity, *x_example.shape), x_example.dtype),
            jnp.zeros((capacity, *y_example.shape), y_example.dtype),
            jnp.zeros((), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        """Number of slots (static)."""
        return self.x.shape[0]

    @property
    def size(self) -> jax.Array:
        """Filled slots, ``min(seen, capacity)`` (int32 scalar)."""
        return jnp.minimum(self.seen, self.capacity)

    def add(self, x: jax.Array, y: jax.Array, key: jax.Array) -> ReplayBuffer:
        """Offer a batch of examples, one after the other, by reservoir sampling.

        Example ``n`` (0-based count over the whole stream) fills slot ``n`` while the
        buffer is not full; afterwards it replaces slot ``j ~ U{0..n}`` when
        ``j < capacity`` and is dropped otherwise.

        Args:
            x: ``[batch, *feature_shape]``.
            y: ``[batch, *label_shape]``.
            key: PRNG key.

        Returns:
            The new buffer.
        """
        if x.shape[1:] != self.x.shape[1:] or y.shape[1:] != self.y.shape[1:] or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"ReplayBuffer.add expects x [batch, {', '.join(map(str, self.x.shape[1:]))}] and y "
                f"[batch{''.join(', ' + str(d) for d in self.y.shape[1:])}], "
                f"got x {tuple(x.shape)} and y {tuple(y.shape)}."
            )

        def offer(buf, item):
            xi, yi, k = item
            j = jax.random.randint(k, (), 0, jnp.maximum(buf.seen + 1, 1))
            slot = jnp.where(buf.seen < self.capacity, buf.seen, j)
            keep = slot < self.capacity
            slot = jnp.minimum(slot, self.capacity - 1)
            new_x = jnp.where(keep, xi.astype(buf.x.dtype), buf.x[slot])
            new_y = jnp.where(keep, yi.astype(buf.y.dtype), buf.y[slot])
            return buf.replace(x=buf.x.at[slot].set(new_x), y=buf.y.at[slot].set(new_y), seen=buf.seen + 1), None

        keys = jax.random.split(key, x.shape[0])
        return jax.lax.scan(offer, self, (x, y, keys))[0]

    def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Draw ``n`` stored examples uniformly with replacement.

        Args:
            key: PRNG key.
            n: examples to draw (static).

        Returns:
            ``(x [n, ...], y [n, ...], mask [n] bool)``; ``mask`` is all ``False`` while the
            buffer is empty (the rows are then zeros and must be ignored, e.g. by weighting
            the loss with the mask).
        """
        check_positive_int("n", n)
        size = self.size
        idx = jax.random.randint(key, (n,), 0, jnp.maximum(size, 1))
        mask = jnp.broadcast_to(size > 0, (n,))
        return self.x[idx], self.y[idx], mask
