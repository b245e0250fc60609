"""The shared differentiable inner loop, and how its result is differentiated.

Every gradient-based learner adapts with :func:`inner_loop`: ``num_steps`` updates of an
Optax transformation on a task loss (the first, then a ``lax.scan`` of the rest). How the
meta-gradient flows back through that loop is a value the user passes (as diffrax's
``adjoint=``):

* :class:`SecondOrder`: backpropagate through every step (exact MAML).
* :class:`FirstOrder`: inner gradients are constants (``stop_gradient``), so the
  meta-gradient is the query gradient at the adapted parameters (FOMAML).
* :class:`Implicit`: iMAML. The inner problem is the proximal one,
  ``min_phi L(phi) + prox/2 ||phi - theta||^2``, solved by the inner optimizer without
  tracking gradients; the meta-gradient ``prox (H + prox I)^-1 g`` comes from implicit
  differentiation of its optimality condition, by conjugate gradient on Hessian-vector
  products at the solution.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metajax._checks import check_non_negative, check_positive, check_positive_int

Params = Any
LossFn = Callable[[Params, Any], tuple[jax.Array, Any]]


class MetaGradient(abc.ABC):
    """How the result of the inner loop is differentiated with respect to its starting point.

    A meta-gradient is a value passed to a learner (``meta_gradient=``) and to
    :func:`inner_loop`; :meth:`loop` runs the inner updates so that differentiating its
    result gives that meta-gradient. A new option is one subclass with its own ``loop``.
    """

    @abc.abstractmethod
    def loop(
        self,
        loss_fn: LossFn,
        params: Params,
        data: Any,
        optimizer: optax.GradientTransformation,
        num_steps: int,
        *,
        per_step: bool,
        track: Callable[[Params], Any] | None,
        remat: bool,
    ) -> tuple[Params, Any]:
        """``(adapted, tracked)`` after ``num_steps`` updates; the arguments are :func:`inner_loop`'s."""


@dataclasses.dataclass(frozen=True)
class SecondOrder(MetaGradient):
    """Differentiate through every inner step: the exact MAML meta-gradient."""

    def loop(self, loss_fn, params, data, optimizer, num_steps, *, per_step, track, remat):
        """Every update stays on the tape."""
        grad_fn = _grad_of(loss_fn, data, per_step)
        return _descend(grad_fn, params, optimizer, num_steps, data if per_step else None, False, track, remat)


@dataclasses.dataclass(frozen=True)
class FirstOrder(MetaGradient):
    """Drop the inner gradients' dependence on the meta-parameters (first-order MAML)."""

    def loop(self, loss_fn, params, data, optimizer, num_steps, *, per_step, track, remat):
        """Every inner gradient is a constant (``stop_gradient``)."""
        grad_fn = _grad_of(loss_fn, data, per_step)
        return _descend(grad_fn, params, optimizer, num_steps, data if per_step else None, True, track, remat)


@dataclasses.dataclass(frozen=True)
class Implicit(MetaGradient):
    """Implicit meta-gradient of the proximal inner problem (iMAML, Rajeswaran et al., 2019).

    The meta-gradient is ``(I + H / (prox + damping))^-1 g``, with ``H`` the support-loss
    Hessian at the inner solution and ``g`` the query gradient there. Without damping that
    system is indefinite wherever ``H`` has curvature below ``-prox`` (a small network's
    support loss often does), and its solution then amplifies or reverses ``g``;
    ``damping`` keeps it positive definite down to ``-(prox + damping)``. It is the exact
    implicit gradient of a proximal problem of strength ``prox + damping``, and tends to
    the first-order meta-gradient as ``damping`` grows.

    Attributes:
        prox: strength ``lambda`` of the proximal term ``lambda/2 ||phi - theta||^2`` that
            the inner optimizer descends on.
        cg_steps: conjugate-gradient iterations for ``(H + (prox + damping) I) x = g``.
        damping: added to ``prox`` in the implicit-gradient system only (the inner problem
            keeps ``prox``); ``>= 0``. The default, 1000, is the value iMAML's defaults were
            measured with (README, "iMAML"); ``0`` gives the exact implicit gradient of the
            proximal problem of strength ``prox``.
    """

    prox: float = 1.0
    cg_steps: int = 5
    damping: float = 1000.0

    def __post_init__(self):
        check_positive("Implicit.prox", self.prox)
        check_positive_int("Implicit.cg_steps", self.cg_steps)
        check_non_negative("Implicit.damping", self.damping)

    def loop(self, loss_fn, params, data, optimizer, num_steps, *, per_step, track, remat):
        """Descend on the proximal problem from ``theta`` untracked; attach the implicit gradient of its solution."""
        if per_step:
            raise ValueError(
                "Implicit() differentiates the solution of one inner problem; it cannot take per_step=True "
                "(a different loss at every step). Use SecondOrder() or FirstOrder()."
            )
        theta = jax.lax.stop_gradient(params)

        def proximal_grad(phi, _):
            g = jax.grad(lambda p: loss_fn(p, data)[0])(phi)
            return jax.tree.map(lambda gi, p, t: gi + self.prox * (p - t), g, phi, theta), None

        phi, tracked = _descend(proximal_grad, theta, optimizer, num_steps, None, True, track, remat)
        phi = _implicit_solution(
            loss_fn, self.prox + self.damping, self.cg_steps, params, jax.lax.stop_gradient(phi), data
        )
        return phi, tracked


def _check_meta_gradient(value: Any, *, allowed: tuple[type, ...] = (MetaGradient,)) -> None:
    """Raise ``TypeError`` unless ``value`` is an instance of one of ``allowed``."""
    if not isinstance(value, allowed):
        names = (
            ", ".join(f"metajax.{t.__name__}()" for t in allowed)
            if allowed != (MetaGradient,)
            else ("a metajax.MetaGradient such as metajax.SecondOrder(), metajax.FirstOrder(), metajax.Implicit()")
        )
        raise TypeError(f"meta_gradient must be {names}; got {value!r}.")


def inner_loop(
    loss_fn: LossFn,
    params: Params,
    data: Any,
    optimizer: optax.GradientTransformation,
    num_steps: int | None = None,
    meta_gradient: MetaGradient = SecondOrder(),
    *,
    per_step: bool = False,
    track: Callable[[Params], Any] | None = None,
    remat: bool = False,
) -> tuple[Params, Any]:
    """Adapt ``params`` with ``num_steps`` updates of ``optimizer`` on ``loss_fn(params, data)``.

    Args:
        loss_fn: ``(params, data) -> (scalar loss, aux)``, the task's training loss. It
            must not close over traced arrays: pass them in ``data`` (the implicit
            meta-gradient needs them as explicit inputs).
        params: starting point (the meta-parameters or a part of them).
        data: the task's training data, e.g. the support set ``(x, y)``. With
            ``per_step=True``, a pytree whose leaves have a leading axis ``[num_steps]``:
            step ``i`` descends on ``loss_fn(params, data[i])`` (online learning, one
            example or batch at a time).
        optimizer: the inner optimizer, e.g. ``optax.sgd(inner_lr)``; its state starts fresh.
        num_steps: number of inner updates (0 returns ``params``); with ``per_step`` it
            defaults to the leading size of ``data``.
        meta_gradient: how the result is differentiated with respect to ``params``.
        per_step: scan over ``data``'s leading axis, one update per slice.
        track: optional ``params -> pytree`` evaluated before the first update and
            after each one (e.g. query metrics); its outputs are stacked along a new
            leading axis of size ``num_steps + 1``.
        remat: recompute each step's activations in the backward pass
            (``jax.checkpoint``), trading compute for memory in long inner loops.

    Returns:
        ``(adapted, tracked)``; ``tracked`` is ``None`` without ``track``.
    """
    if per_step:
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(data)}
        if len(sizes) != 1 or (num_steps is not None and sizes != {num_steps}):
            raise ValueError(
                f"per_step=True needs every leaf of data to have one leading size equal to num_steps={num_steps}; "
                f"got leading sizes {sorted(sizes)}."
            )
        num_steps = sizes.pop() if num_steps is None else num_steps
    if num_steps is None:
        raise ValueError("num_steps is required unless per_step=True.")
    check_positive_int("num_steps", num_steps, allow_zero=True)
    _check_meta_gradient(meta_gradient)
    return meta_gradient.loop(loss_fn, params, data, optimizer, num_steps, per_step=per_step, track=track, remat=remat)


def optimize(
    loss_fn: Callable[[Params, Any], tuple[jax.Array, Any]],
    params: Params,
    opt_state: optax.OptState,
    optimizer: optax.GradientTransformation,
    xs: Any = None,
    *,
    num_steps: int | None = None,
) -> tuple[Params, optax.OptState, Any]:
    """Plain optimisation on the inner loop's scan: updates of ``loss_fn(params, x) -> (loss, aux)``.

    One update per slice of ``xs`` (leading axis; e.g. a PRNG key per step) or, with
    ``xs=None``, ``num_steps`` updates of ``loss_fn(params, None)``. Unlike
    :func:`inner_loop`, the optimizer state is passed in and returned, so an online
    learner keeps it from one incoming batch to the next.

    Returns:
        ``(params, opt_state, aux)`` with ``aux`` of the last step (computed before its update).
    """

    grad_fn = jax.grad(loss_fn, has_aux=True)
    (params, opt_state), aux = _scan(grad_fn, params, opt_state, optimizer, xs, num_steps, False, None, False)
    return params, opt_state, jax.tree.map(lambda a: a[-1], aux)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit_solution(loss_fn, prox, cg_steps, theta, phi, data):
    """``phi``, the proximal solution; the VJP sends ``prox (H + prox I)^-1 g`` to ``theta``.

    ``prox`` here is the strength of the system (``Implicit.prox + Implicit.damping``).
    """
    del loss_fn, prox, cg_steps, theta, data
    return phi


def _implicit_solution_fwd(loss_fn, prox, cg_steps, theta, phi, data):
    return phi, (phi, data)


def _implicit_solution_bwd(loss_fn, prox, cg_steps, residuals, g):
    # d phi / d theta = prox (H + prox I)^-1 with H the training-loss Hessian at phi.
    phi, data = residuals
    grad_fn = jax.grad(lambda p: loss_fn(p, data)[0])

    def matvec(v):
        hv = jax.jvp(grad_fn, (phi,), (v,))[1]
        return jax.tree.map(lambda a, b: a + prox * b, hv, v)

    x = conjugate_gradient(matvec, g, cg_steps)
    zeros = jax.tree.map(jnp.zeros_like, (phi, data))
    return jax.tree.map(lambda a: prox * a, x), zeros[0], zeros[1]


_implicit_solution.defvjp(_implicit_solution_fwd, _implicit_solution_bwd)


def conjugate_gradient(matvec: Callable[[Params], Params], rhs: Params, steps: int) -> Params:
    """At most ``steps`` iterations of conjugate gradient for ``matvec(x) = rhs`` from ``x = 0``.

    Truncated (Steihaug) CG: iteration stops at the first direction of non-positive
    curvature, or once the residual vanishes. On a symmetric positive definite system
    this is plain CG; on the indefinite systems a non-convex network's Hessian gives
    (``H + prox I`` with large negative eigenvalues) it stays finite instead of diverging.
    A fixed iteration count keeps the cost static under ``jit`` and ``vmap``.
    """

    def dot(a, b):
        return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    def axpy(alpha, x, y):
        return jax.tree.map(lambda u, v: alpha * u + v, x, y)

    def body(_, carry):
        x, r, p, rr, active = carry
        ap = matvec(p)
        curvature = dot(p, ap)
        active = active & (curvature > 0) & (rr > 0)
        alpha = jnp.where(active, rr / jnp.where(active, curvature, 1.0), 0.0)
        x, r = axpy(alpha, p, x), axpy(-alpha, ap, r)
        rr_new = dot(r, r)
        beta = jnp.where(active, rr_new / jnp.where(active, rr, 1.0), 0.0)
        return x, r, axpy(beta, p, r), rr_new, active

    x0 = jax.tree.map(jnp.zeros_like, rhs)
    return jax.lax.fori_loop(0, steps, body, (x0, rhs, rhs, dot(rhs, rhs), jnp.array(True)))[0]


def _grad_of(loss_fn, data, per_step):
    """``(params, x) -> (gradient, None)``: of ``loss_fn(params, x)`` per step, else of ``loss_fn(params, data)``."""
    if per_step:
        return lambda p, x: (jax.grad(lambda q: loss_fn(q, x)[0])(p), None)
    return lambda p, _: (jax.grad(lambda q: loss_fn(q, data)[0])(p), None)


def _scan(grad_fn, params, opt_state, optimizer, xs, length, stop_inner_gradient, track, remat):
    """THE inner loop: ``grad_fn(p, x) -> (gradient, aux)``; one ``optimizer`` update per step, after the first a scan.

    Returns ``((params, opt_state), per-step outputs)``: ``track(p)`` after each update, else ``aux``.
    """

    def step(carry, x):
        p, state = carry
        g, aux = grad_fn(p, x)
        if stop_inner_gradient:
            g = jax.lax.stop_gradient(g)
        updates, state = optimizer.update(g, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), (track(p) if track is not None else aux)

    if remat:
        step = jax.checkpoint(step)
    steps = jax.tree.leaves(xs)[0].shape[0] if xs is not None else length
    if steps == 0:
        return jax.lax.scan(step, (params, opt_state), xs, length=None if xs is not None else length)
    # The first update runs before the scan. Under ``vmap`` over tasks its parameters are still
    # the shared ones, so its products are one matmul (or convolution) over every task's rows;
    # as the scan's carry they would be broadcast to one copy per task first.
    carry, first = step((params, opt_state), None if xs is None else jax.tree.map(lambda a: a[0], xs))
    if steps == 1:
        return carry, jax.tree.map(lambda a: a[None], first)
    carry, rest = jax.lax.scan(
        step,
        carry,
        None if xs is None else jax.tree.map(lambda a: a[1:], xs),
        length=None if xs is not None else steps - 1,
    )
    return carry, jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


def _descend(grad_fn, params, optimizer, num_steps, xs, stop_inner_gradient, track, remat):
    """``num_steps`` updates from a fresh optimizer state; ``(adapted, tracked)`` with the start prepended."""
    (adapted, _), tracked = _scan(
        grad_fn, params, optimizer.init(params), optimizer, xs, num_steps, stop_inner_gradient, track, remat
    )
    if track is not None:
        tracked = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), track(params), tracked)
    return adapted, tracked


class LearnedRatesState(NamedTuple):
    """``scale_by_learned_rates``'s state: the inner updates taken (read with per-step rates only)."""

    taken: jax.Array


def scale_by_learned_rates(rates: Params, *, per_step: bool = False) -> optax.GradientTransformation:
    """Inner optimizer with learned step sizes: ``update = -rates * grad``.

    Args:
        rates: a pytree with the structure of the adapted parameters. Without
            ``per_step``, each leaf broadcasts against its parameter (Meta-SGD: one rate per
            weight). With ``per_step``, each leaf has a leading axis ``[steps, ...]`` and
            update ``k`` uses ``rates[k]`` (MAML++'s per-layer per-step rates: leaves
            ``[steps]``, one scalar per parameter tensor and step); updates past ``steps``
            use the last row.
        per_step: index the rates by the update's number.
    """

    def init(params):
        del params
        return LearnedRatesState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        del params

        def scaled(a, g):
            if per_step:
                a = a[jnp.minimum(state.taken, a.shape[0] - 1)]
            return -a * g

        return jax.tree.map(scaled, rates, updates), LearnedRatesState(state.taken + 1)

    return optax.GradientTransformation(init, update)


def _fit_supervised(
    predict: Callable[[Params, jax.Array], jax.Array],
    objective: Callable,
    params: Params,
    support: tuple[jax.Array, jax.Array],
    optimizer: optax.GradientTransformation,
    num_steps: int,
    meta_gradient: MetaGradient,
    query: tuple[jax.Array, jax.Array] | None = None,
    remat: bool = False,
) -> tuple[Params, Any]:
    """:func:`inner_loop` on ``objective(predict(params, x), y)`` over ``support = (x, y)``.

    The common adaptation of learners whose adapted state is a set of weights. With
    ``query = (x, y)`` the query metrics are tracked before and after every step
    (arrays ``[num_steps + 1]``); otherwise the second result is ``None``.
    """
    sx, sy = support
    track = None
    if query is not None:
        qx, qy = query

        def track(p):
            return objective(predict(p, qx), qy)[1]

    return inner_loop(
        lambda p, xy: objective(predict(p, xy[0]), xy[1]),
        params,
        (sx, sy),
        optimizer,
        num_steps,
        meta_gradient,
        track=track,
        remat=remat,
    )


def _sgd_or(optimizer: optax.GradientTransformation | None, lr: float) -> optax.GradientTransformation:
    """``optimizer`` if given, else plain SGD with step size ``lr`` (MAML's inner update)."""
    return optax.sgd(lr) if optimizer is None else optimizer


def apply_model(
    model: nn.Module, params: Params, x: jax.Array, model_state: dict | None = None, **kwargs: Any
) -> jax.Array:
    """``model.apply({"params": params, **model_state}, x, **kwargs)``; integer ``x`` is refused.

    ``model_state``: the model's other variable collections, e.g. ``{"batch_stats": ...}``
    (``None``: none). Flax would promote an integer ``x`` silently.
    """
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(
            f"the model's inputs x (an episode's support_x / query_x) must be floating point, got dtype {x.dtype} "
            f"{tuple(x.shape)}; convert them, e.g. images as x.astype(jnp.float32) / 255."
        )
    # flax types ``Module.apply`` as ``Any | tuple[Any, variables]``; the tuple comes only with ``mutable=``.
    return cast(jax.Array, model.apply({"params": params, **(model_state or {})}, x, **kwargs))
