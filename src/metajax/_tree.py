"""Split objects into the arrays a jitted function takes as arguments and the rest it closes over."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def is_array(x: Any) -> bool:
    """Whether a pytree leaf is an array (a jitted function's argument) rather than static configuration."""
    return isinstance(x, jax.Array | np.ndarray)


def partition(obj: Any) -> tuple[list, Callable[[list], Any]]:
    """Arrays of ``obj``'s pytree leaves, and a function rebuilding ``obj`` from new arrays.

    Passing the arrays to ``jax.jit`` as arguments, instead of closing over them, keeps
    large data (a dataset held by a task distribution) a device buffer rather than a
    constant embedded in the compiled program. Objects that are not pytrees are one
    static leaf and come back unchanged.
    """
    leaves, treedef = jax.tree.flatten(obj)
    arrays_at = [is_array(x) for x in leaves]
    arrays = [x for x, a in zip(leaves, arrays_at, strict=True) if a]
    static = [None if a else x for x, a in zip(leaves, arrays_at, strict=True)]

    def combine(new_arrays: list) -> Any:
        it = iter(new_arrays)
        return jax.tree.unflatten(treedef, [next(it) if a else s for a, s in zip(arrays_at, static, strict=True)])

    return arrays, combine
