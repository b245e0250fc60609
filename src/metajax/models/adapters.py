"""Flax NNX and equinox modules as pure-function models, the interface every learner takes.

A learner reads its model through two pure functions, those of a Linen module:
``model.init(key, x) -> {"params": params}`` and ``model.apply({"params": params}, x) ->
outputs``, with ``x [examples, ...]``. :func:`from_nnx` and :func:`from_equinox` give an NNX
or an equinox module those two functions (a :class:`PureModel`), so learners take it
unchanged wherever they take a Linen module: ``MAML(from_nnx(net))``, ``ProtoNet(from_equinox(body), ways=5)``.
:func:`as_model` picks the adapter from the module's type.

What becomes a meta-parameter:

* **NNX:** the module's ``nnx.Param`` variables (``nnx.split(module, nnx.Param, ...)``), as
  a nested dict (``nnx.to_pure_dict``). Every other variable is held fixed: an
  ``nnx.BatchNorm``'s running averages are neither learned nor updated. In training mode
  (the default) it normalises with the statistics of the batch it is given, as metajax's own
  backbones do (MAML's transductive batch norm); after ``module.eval()`` it normalises with
  the stored averages. RNG state is fixed too: a stochastic layer draws the same numbers at
  every call, so build ``nnx.Dropout`` with ``deterministic=True`` or leave it out.
* **equinox:** the module's floating-point arrays (``eqx.partition(module,
  eqx.is_inexact_array)``), as a module-shaped pytree; the rest (integer arrays, static
  fields, functions) is held fixed. Stateful layers (``eqx.nn.BatchNorm``, anything with an
  ``eqx.nn.StateIndex``) are refused.

The meta-parameters start at the module's own weights: ``init``'s key is unused, so the
seed of a run does not change them; build the module from the key you want
(``nnx.Rngs(key)``, ``key=``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import reprlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

_EXTRA = "pip install 'metajax[equinox]'"


@dataclasses.dataclass(frozen=True, eq=False)
class PureModel:
    """A model as Linen's two pure functions, ``init`` and ``apply``, around fixed initial weights.

    Built by :func:`from_nnx` and :func:`from_equinox`. Equal and hashable by identity (it
    holds arrays), so a learner holding it stays a hashable configuration: reuse one
    ``PureModel`` for runs that should share a compiled program.

    Attributes:
        params: the initial meta-parameters, a pytree of arrays.
        forward: ``(params, x [examples, ...]) -> outputs [examples, ...]``, pure.
        source: where the model comes from, ``"nnx"`` or ``"equinox"`` (for messages).
    """

    params: Any = dataclasses.field(repr=False)
    forward: Callable[[Any, jax.Array], jax.Array] = dataclasses.field(repr=False)
    source: str

    def init(self, key: jax.Array | None, x: jax.Array) -> dict:
        """``{"params": a copy of the initial weights}``; ``key`` is unused, ``x [examples, ...]`` is checked to run.

        A copy, because a training loop donates its parameters' buffers.
        """
        del key
        jax.eval_shape(self.forward, self.params, x)
        return {"params": jax.tree.map(jnp.copy, self.params)}

    def apply(self, variables: dict, x: jax.Array) -> jax.Array:
        """``forward(variables["params"], x)``: outputs ``[examples, ...]`` for inputs ``x [examples, ...]``."""
        if not isinstance(variables, dict) or set(variables) != {"params"}:
            names = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
            raise ValueError(f"the variables of this {self.source} model must be {{'params': params}}, got {names}.")
        params = variables["params"]
        # Any: mypy sees jaxlib's PyTreeDef as partially typed and refuses to compare it.
        expected: Any = jax.tree.structure(self.params)
        found = jax.tree.structure(params)
        if expected != found:
            raise ValueError(
                f"params do not fit this {self.source} model: expected the structure {expected}, got {found}."
            )
        return self.forward(params, x)


def from_nnx(module: nnx.Module) -> PureModel:
    """The :class:`PureModel` of a Flax NNX module called on a batch, ``module(x [examples, ...])``.

    Its ``nnx.Param`` variables are the meta-parameters (a nested dict); other state
    (batch-norm averages, RNG state) is held fixed, as :mod:`metajax.models.adapters` describes.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> model = from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
        >>> params = model.init(None, jnp.zeros((4, 3)))["params"]
        >>> sorted(params), model.apply({"params": params}, jnp.zeros((4, 3))).shape
        (['bias', 'kernel'], (4, 2))
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx's module must be a flax.nnx.Module, got {_describe(module)}.")
    graphdef, params, *rest = nnx.split(module, nnx.Param, ...)
    return PureModel(nnx.to_pure_dict(params), functools.partial(_nnx_forward, graphdef, tuple(rest)), "nnx")


def _nnx_forward(graphdef: nnx.GraphDef, rest: tuple[nnx.State, ...], params: dict, x: jax.Array) -> jax.Array:
    # copy=True: the call may write to its variables (a BatchNorm's averages); it writes to a
    # copy, so the held state never changes and never meets a tracer of another trace.
    return nnx.merge(graphdef, params, *rest, copy=True)(x)


def from_equinox(module: Any, *, batched: bool = False) -> PureModel:
    """The :class:`PureModel` of an equinox module.

    Its floating-point arrays are the meta-parameters (a module-shaped pytree, ``None``
    elsewhere); the rest is held fixed.

    Args:
        module: an ``equinox.Module`` without state (no ``eqx.nn.StateIndex``).
        batched: ``False`` (equinox's convention): the module maps ONE example
            ``[...] -> [...]`` and is vmapped over the examples; ``True``: it maps a batch
            ``[examples, ...] -> [examples, ...]`` itself (e.g. to normalise with the
            batch's statistics).

    Raises:
        ImportError: equinox is not installed (``pip install 'metajax[equinox]'``).

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx
        >>> model = from_equinox(eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0)))
        >>> params = model.init(None, jnp.zeros((4, 3)))["params"]
        >>> model.apply({"params": params}, jnp.zeros((4, 3))).shape
        (4, 2)
    """
    eqx = _equinox()
    if not isinstance(module, eqx.Module):
        raise TypeError(f"from_equinox's module must be an equinox.Module, got {_describe(module)}.")
    stateful = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(module, is_leaf=_is_state_index)
        if _is_state_index(leaf)
    ]
    if stateful:
        raise ValueError(
            f"from_equinox's module holds state (eqx.nn.StateIndex) at {', '.join(stateful)}, which a pure "
            "(params, x) function cannot thread; leave out stateful layers (eqx.nn.BatchNorm), or normalise with "
            "the batch's own statistics in a module called on the whole batch (batched=True)."
        )
    params, static = eqx.partition(module, eqx.is_inexact_array)
    return PureModel(params, functools.partial(_equinox_forward, static, batched), "equinox")


def _equinox_forward(static: Any, batched: bool, params: Any, x: jax.Array) -> jax.Array:
    module = _equinox().combine(params, static)
    return module(x) if batched else jax.vmap(module)(x)


def _is_state_index(x: Any) -> bool:
    return isinstance(x, _equinox().nn.StateIndex)


def _equinox() -> ModuleType:
    """The equinox package; ``ImportError`` naming the extra when it is not installed."""
    try:
        return importlib.import_module("equinox")
    except ImportError as error:
        raise ImportError(f"equinox models need the equinox package: {_EXTRA}.") from error


def as_model(module: Any) -> nn.Module | PureModel:
    """``module`` as a model every learner takes, the adapter chosen by its type.

    Linen modules and :class:`PureModel` s come back as they are, NNX modules through
    :func:`from_nnx`, equinox modules through :func:`from_equinox` (one example per call).

    Raises:
        TypeError: ``module`` is none of these.

    Example:
        >>> from flax import nnx
        >>> type(as_model(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))).__name__
        'PureModel'
    """
    if isinstance(module, nn.Module | PureModel):
        return module
    if isinstance(module, nnx.Module):
        return from_nnx(module)
    eqx = sys.modules.get("equinox")  # an equinox module exists only once equinox is imported
    if eqx is not None and isinstance(module, eqx.Module):
        return from_equinox(module)
    try:
        _equinox()
        hint = ""
    except ImportError:
        hint = f" (equinox is not installed: {_EXTRA})"
    raise TypeError(
        f"module must be a flax.linen.Module, a flax.nnx.Module or an equinox.Module{hint}; got {_describe(module)}."
    )


def _describe(value: Any) -> str:
    """``value`` in an error message: a builtin's short repr, else its type and where it is from.

    Not a module's repr, which prints its weights.
    """
    kind = type(value)
    if kind.__module__ == "builtins":
        return f"{kind.__name__}: {reprlib.repr(value)}"
    return f"{kind.__name__} (from {kind.__module__})"
