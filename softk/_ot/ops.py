"""The core ops behind :func:`softk.sinkhorn`: one solve, then the value, plan or ``P v``.

Every op takes the problem arrays, named by the static ``names`` parameter
(``cost`` or ``x, y``, then optionally ``a``, ``b``). The ``*_AT`` ops also
take the solved potentials ``fg = concat(f, g)`` as a last array and return
no gradient for it: their backwards already account for how the optimal
potentials move with the problem.

:data:`POTENTIALS` solves (one strategy of :mod:`softk._ot`) and returns
``(f, g, error, n_iter)``: ``error`` is measured on the plan of the returned
potentials (rounding included), and ``f, g`` are fixed in the gauge
``<f, a> = <g, b>`` and differentiable (:func:`softk._ot.implicit.potentials_vjp`).
The other ops' gradients:

* value ``W = <f, a> + <g, b>`` (the regularised OT cost at the optimum):
  envelope theorem, ``dW/dC = P``, ``dW/da = f``, ``dW/db = g``;
* plan ``P`` and ``P v``: implicit differentiation of the marginal
  constraints (:func:`softk._ot.implicit.plan_vjp`), Schur complement for at most
  ``SCHUR_MAX`` targets, conjugate gradients beyond.

Weights are renormalised inside the op (``a / sum(a)``) and differentiated
through that, so weight gradients are centred: ``sum_i a_i dW/da_i = 0``.
:data:`COST` and :data:`PLAN` are the same ops with their own solve, for
:func:`softk.vjp`.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._dispatch import while_loop
from .._op import CoreOp
from .._warnings import warn_if_not_converged
from .blocks import PlanBlocks, plan_products, value_vjp
from .blocks import apply as online_apply
from .blocks import apply_vjp as online_apply_vjp
from .costs import sqeuclidean, sqeuclidean_vjp
from .implicit import plan_vjp, potentials_vjp
from .kernel import solve
from .newton import semidual_newton
from .online import solve as online_solve
from .plan import balanced, marginal_error, plan_from_potentials, rounding_floor
from .schedule import INNER_TOL
from .solved import finish_log_domain, needs_finish
from .symmetric import symmetric_solve

__all__ = ["POTENTIALS", "VALUE_AT", "PLAN_AT", "APPLY_AT", "COST", "PLAN", "APPLY"]

# The *_AT ops' gradient for ``fg``: None, which PyTorch and JAX read as a zero cotangent. A
# zero-filled array would make autograd run POTENTIALS' backward, whose zero gradient for the
# cost (n x m) is then added to the real one: two more n x m arrays at the backward's peak.
NO_GRADIENT = None


WARM_BUDGET = 500  # iterations the divergence's warm-started cross solve gets before the epsilon schedule takes over


def problem(xp: Any, arrays: tuple, names: tuple, online: bool = False) -> tuple[Any, Any, Any, dict]:
    """``(cost, log_a, log_b, inputs)`` from the op's arrays (weights renormalised).

    ``cost`` is None for point clouds ``online`` (never formed)."""
    d = dict(zip(names, arrays))
    if "cost" in d:
        cost = like = d["cost"]
        batch, (n, m) = cost.shape[:-2], cost.shape[-2:]
    else:
        like, n, m = d["x"], d["x"].shape[-2], d["y"].shape[-2]
        batch = broadcast_batch(d["x"].shape[:-2], d["y"].shape[:-2])
        cost = None if online else sqeuclidean(xp, d["x"], d["y"])
    return cost, _log_weights(xp, d.get("a"), batch, n, like), _log_weights(xp, d.get("b"), batch, m, like), d


def broadcast_batch(s: tuple, t: tuple, what: str = "the inputs") -> tuple:
    """The broadcast of two batch shapes, or a ValueError naming ``what``."""
    s, t = (1,) * (len(t) - len(s)) + tuple(s), (1,) * (len(s) - len(t)) + tuple(t)
    if any(i != j and 1 not in (i, j) for i, j in zip(s, t)):
        raise ValueError(f"the batch shapes of {what} do not broadcast: {tuple(s)} and {tuple(t)}")
    return tuple(max(i, j) if 1 in (i, j) else i for i, j in zip(s, t))


def _log_weights(xp: Any, w: Any, batch: tuple, n: int, like: Any) -> Any:
    if w is None:
        return xp.full((*batch, n), -math.log(n), dtype=like.dtype, device=device(like))
    w = xp.broadcast_to(w, (*batch, n))
    return xp.log(w) - xp.log(xp.sum(w, axis=-1, keepdims=True))


def split(fg: Any, n: int) -> tuple[Any, Any]:
    return fg[..., :n], fg[..., n:]


def _grads(xp: Any, d: dict, names: tuple, grad_cost: Any, grad_la: Any, grad_lb: Any) -> tuple:
    """Chain ``dL/dC`` (or ``(dL/dx, dL/dy)``) and the normalised-weight gradients back to the named arrays."""
    out = {}
    if "cost" in d:
        out["cost"] = grad_cost
    elif isinstance(grad_cost, tuple):  # already (dx, dy): the online value VJP
        out["x"], out["y"] = grad_cost
    else:
        out["x"], out["y"] = sqeuclidean_vjp(xp, d["x"], d["y"], grad_cost)
    for name, grad in (("a", grad_la), ("b", grad_lb)):
        if name in d:
            w = xp.broadcast_to(d[name], grad.shape)
            total = xp.sum(w, axis=-1, keepdims=True)
            out[name] = (grad - xp.sum(grad * w, axis=-1, keepdims=True) / total) / total
    return tuple(_unbroadcast(xp, out[name], d[name].shape) for name in names)


def _unbroadcast(xp: Any, grad: Any, shape: tuple) -> Any:
    """Sum ``grad`` over the dimensions that broadcasting added to an input of ``shape``."""
    lead = grad.ndim - len(shape)
    if lead:
        grad = xp.sum(grad, axis=tuple(range(lead)))
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, grad.shape)) if s == 1 and t != 1)
    return xp.sum(grad, axis=axes, keepdims=True) if axes else grad


def _potentials(xp, *arrays, names, epsilon, tol, max_iter, check_every, scaling, online, method="sinkhorn", has_init=False, what="sinkhorn", warn=True, **_):
    """Solve; return ``((f, g, error, n_iter), (f, g))`` with ``error`` measured on the plan of the
    returned ``f, g`` (:func:`measured_error`) and the potentials in the gauge ``<f, a> = <g, b>``."""
    init = None
    if has_init:
        arrays, (f0, g0) = arrays[:-2], arrays[-2:]
    cost, log_a, log_b, d = problem(xp, arrays, names, online)
    if has_init:
        init = (xp.broadcast_to(f0, log_a.shape), xp.broadcast_to(g0, log_b.shape))
    # the strategies stop at half of tol by their own estimate: the other half is left to the
    # rounding of the returned plan and to its columns, which the estimate does not see
    kw = dict(tol=INNER_TOL * tol, max_iter=max_iter, check_every=check_every, init=init, scaling=scaling)
    if method == "newton":
        r = _newton(xp, cost, log_a, log_b, epsilon, **kw)
    elif online:
        x, y = xp.broadcast_to(d["x"], (*log_a.shape, d["x"].shape[-1])), xp.broadcast_to(d["y"], (*log_b.shape, d["y"].shape[-1]))
        r = online_solve(xp, x, y, log_a, log_b, epsilon, **kw)
    else:
        r = solve(xp, cost, log_a, log_b, epsilon, **kw)
    (f, g), n_iter = balanced(xp, r.f, r.g, xp.exp(log_a), xp.exp(log_b)), r.n_iter
    error = measured_error(xp, arrays, names, f, g, epsilon)
    if method != "newton" and not online and needs_finish(xp, error, tol, n_iter, max_iter, f, g, epsilon):
        f, g, n_iter = finish_log_domain(xp, cost, log_a, log_b, epsilon, f, g, n_iter, tol=tol, max_iter=max_iter, check_every=check_every)
        error = measured_error(xp, arrays, names, f, g, epsilon)
    if warn:
        warn_if_not_converged(xp, error <= tol, what, error=error, tol=tol, rounding=rounding_floor(xp, f, g, epsilon))
    # the residuals are copies: an autograd Function must not save its own outputs as constants
    return (f, g, error, xp.astype(n_iter, xp.int64 if _has_int64(xp) else xp.int32)), (xp.asarray(f, copy=True), xp.asarray(g, copy=True))


def measured_error(xp: Any, arrays: tuple, names: tuple, f: Any, g: Any, epsilon: float) -> Any:
    """Worst ``||P 1 - a||_1 + ||P^T 1 - b||_1`` over the batch of the plan at ``(f, g)``, formed
    block by block (O(n + m) memory) with the same arithmetic as :func:`softk._ot.plan.plan_from_potentials`."""
    _, log_a, log_b, d = problem(xp, arrays, names, online=True)
    x = y = None
    if "cost" not in d:
        x = xp.broadcast_to(d["x"], (*log_a.shape, d["x"].shape[-1]))
        y = xp.broadcast_to(d["y"], (*log_b.shape, d["y"].shape[-1]))
    plan = PlanBlocks(xp, log_a, log_b, f, g, epsilon, cost=d.get("cost"), x=x, y=y)
    rows, cols = plan_products(xp, plan, _ones_column(xp, log_b), _ones_column(xp, log_a))
    return marginal_error(xp, rows[..., 0], cols[..., 0], xp.exp(log_a), xp.exp(log_b))


def _ones_column(xp: Any, like: Any) -> Any:
    return xp.ones((*like.shape, 1), dtype=like.dtype, device=device(like))


def _has_int64(xp: Any) -> bool:
    """Whether ``xp`` makes int64 arrays (JAX without x64 does not)."""
    return xp.asarray(0, dtype=xp.int64).dtype == xp.int64


def _potentials_vjp(xp, arrays, residuals, cotangent, *, names, epsilon, online, has_init=False, **_):
    """Implicit VJP of the gauge-fixed potentials (:func:`softk._ot.implicit.potentials_vjp`);
    the plan is formed (n x m), also for a problem solved online."""
    cot_f, cot_g = cotangent[0], cotangent[1]
    problem_arrays = arrays[:-2] if has_init else arrays
    extra = (None, None) if has_init else ()
    if cot_f is None and cot_g is None:
        return (*(None for _ in problem_arrays), *extra)
    f, g = residuals
    cost, log_a, log_b, d = problem(xp, problem_arrays, names)
    plan = plan_from_potentials(xp, cost, log_a, log_b, f, g, epsilon)
    cot_f = xp.zeros_like(f) if cot_f is None else cot_f
    cot_g = xp.zeros_like(g) if cot_g is None else cot_g
    grad_cost, grad_a, grad_b = potentials_vjp(xp, plan, f, g, cot_f, cot_g, epsilon)
    return (*_grads(xp, d, names, grad_cost, grad_a, grad_b), *extra)


def _newton(xp, cost, log_a, log_b, epsilon, *, tol, max_iter, init, scaling, **_):
    """Potentials by Newton on the semi-dual (:mod:`softk._ot.newton`): rows exact, ``error`` the
    worst relative column error; epsilon continuation from the cost's range unless ``scaling``
    is off or ``init`` is given (its ``g`` is the start)."""
    cost = xp.broadcast_to(cost, (*log_a.shape[:-1], *cost.shape[-2:]))
    start = epsilon
    if scaling and init is None:
        start = xp.max(cost, axis=(-2, -1)) - xp.min(cost, axis=(-2, -1))
    g0 = None if init is None else init[1]
    return semidual_newton(xp, cost, log_a, log_b, epsilon, tol=tol, max_iter=max_iter, eps_start=start, init=g0)


def _value_at(xp, *arrays, names, **_):
    _, log_a, log_b, _ = problem(xp, arrays[:-1], names, online=True)
    f, g = split(arrays[-1], log_a.shape[-1])
    return xp.asarray(xp.sum(xp.exp(log_a) * f, axis=-1) + xp.sum(xp.exp(log_b) * g, axis=-1)), ()


def _value_at_vjp(xp, arrays, residuals, cotangent, *, names, epsilon, online, **_):
    cost, log_a, log_b, d = problem(xp, arrays[:-1], names, online)
    f, g = split(arrays[-1], log_a.shape[-1])
    cot = cotangent[..., None]
    if online:
        grad_xy = value_vjp(xp, d["x"], d["y"], log_a, log_b, f, g, epsilon, cotangent)
        grads = _grads(xp, d, names, grad_xy, cot * f, cot * g)
    else:
        plan = plan_from_potentials(xp, cost, log_a, log_b, f, g, epsilon)
        plan *= cotangent[..., None, None]
        grads = _grads(xp, d, names, plan, cot * f, cot * g)
    return (*grads, NO_GRADIENT)


def _plan_at(xp, *arrays, names, epsilon, **_):
    cost, log_a, log_b, _ = problem(xp, arrays[:-1], names)
    f, g = split(arrays[-1], log_a.shape[-1])
    return plan_from_potentials(xp, cost, log_a, log_b, f, g, epsilon), ()


def _implicit(xp, arrays, cot_plan, names, epsilon):
    """Gradients of ``<cot_plan, P>`` (``cot_plan`` broadcastable to the plan)."""
    plan, _ = _plan_at(xp, *arrays, names=names, epsilon=epsilon)
    grad_cost, u, w = plan_vjp(xp, plan, cot_plan, epsilon, with_weights=True)
    _, _, _, d = problem(xp, arrays[:-1], names)
    return (*_grads(xp, d, names, grad_cost, u, w), NO_GRADIENT)


def _plan_at_vjp(xp, arrays, residuals, cotangent, *, names, epsilon, **_):
    return _implicit(xp, arrays, cotangent, names, epsilon)


def _blocks(xp, arrays, names, epsilon):
    """The plan at the given potentials as :class:`softk._ot.blocks.PlanBlocks` (never formed),
    the named inputs and the clouds broadcast to the batch (None for a cost matrix)."""
    _, log_a, log_b, d = problem(xp, arrays[:-1], names, online=True)  # a cost matrix is never copied
    x = y = None
    if "cost" not in d:
        x = xp.broadcast_to(d["x"], (*log_a.shape, d["x"].shape[-1]))
        y = xp.broadcast_to(d["y"], (*log_b.shape, d["y"].shape[-1]))
    f, g = split(arrays[-1], log_a.shape[-1])
    plan = PlanBlocks(xp, log_a, log_b, f, g, epsilon, cost=d.get("cost"), x=x, y=y)
    return plan, d, x, y


def _apply_at(xp, *arrays, names, epsilon, **_):
    """``P V`` one row block of ``P`` at a time (``P`` is never formed)."""
    plan, _, _, _ = _blocks(xp, arrays[:-1], names, epsilon)
    return online_apply(xp, plan, arrays[-1]), ()


def _apply_at_vjp(xp, arrays, residuals, cotangent, *, names, epsilon, online, **_):
    """``P V``: ``dV = P^T cot``; the plan's cotangent is ``cot V^T``.

    Online: blockwise (:func:`softk._ot.blocks.apply_vjp`, O(n + m) memory); otherwise ``P`` is formed
    (the cost matrix, or its gradient, is n x m anyway) and the dense implicit VJP runs on it."""
    v = arrays[-1]
    if online:
        plan, d, x, y = _blocks(xp, arrays[:-1], names, epsilon)
        geometry, u, w, grad_v = online_apply_vjp(xp, plan, v, cotangent, x=x, y=y)
        grads = _grads(xp, d, names, geometry, u, w)
        return (*grads, NO_GRADIENT, _unbroadcast(xp, grad_v, v.shape))
    plan, _ = _plan_at(xp, *arrays[:-1], names=names, epsilon=epsilon)
    grad_v = _unbroadcast(xp, xp.matrix_transpose(plan) @ cotangent, v.shape)
    del plan
    return (*_implicit(xp, arrays[:-1], cotangent @ xp.matrix_transpose(v), names, epsilon), grad_v)


def _solving(name: str, at: CoreOp) -> CoreOp:
    """``at`` preceded by its own solve (the potentials kept as residuals); warns if not converged."""

    def forward(xp, *arrays, **params):
        (f, g, _, _), _ = _potentials(xp, *arrays, **params, what=name)
        fg = xp.concat([f, g], axis=-1)
        out, _ = at.forward(xp, *arrays, fg, **params)
        return out, (fg,)

    def backward(xp, arrays, residuals, cotangent, **params):
        return at.backward(xp, (*arrays, *residuals), (), cotangent, **params)[:-1]

    return CoreOp(name, forward, backward)


def _apply_solving(xp, *arrays, **params):
    """``P V`` with its own solve: the arrays are the problem's, then ``V``."""
    (f, g, _, _), _ = _potentials(xp, *arrays[:-1], **params, what="sinkhorn_apply")
    fg = xp.concat([f, g], axis=-1)
    out, _ = _apply_at(xp, *arrays[:-1], fg, arrays[-1], **params)
    return out, (fg,)


def _apply_solving_vjp(xp, arrays, residuals, cotangent, **params):
    grads = _apply_at_vjp(xp, (*arrays[:-1], *residuals, arrays[-1]), (), cotangent, **params)
    return (*grads[:-2], grads[-1])


def _symmetric(xp, *arrays, names, epsilon, tol, max_iter, check_every, scaling, online, **_):
    """The self-transport potential of a problem ``(x, x[, a, a])``: ``(f, error, n_iter)``,
    ``error`` measured on the plan at ``(f, f)``; warns if it misses ``tol``."""
    cost, log_a, _, d = problem(xp, arrays, names, online)
    x = None if cost is not None else xp.broadcast_to(d["x"], (*log_a.shape, d["x"].shape[-1]))
    r = symmetric_solve(xp, log_a, epsilon, cost=cost, x=x, tol=INNER_TOL * tol, max_iter=max_iter, check_every=check_every, scaling=scaling)
    error = measured_error(xp, arrays, names, r.f, r.f, epsilon)
    warn_if_not_converged(xp, error <= tol, "sinkhorn_divergence's self-transport", error=error, tol=tol)
    return r.f, error, r.n_iter


def _self_problem(xp, d: dict, cloud: str, weight: str) -> tuple[tuple, tuple]:
    """``(arrays, names)`` of the self-transport problem of one cloud of a divergence."""
    if weight in d:
        return (d[cloud], d[cloud], d[weight], d[weight]), ("x", "y", "a", "b")
    return (d[cloud], d[cloud]), ("x", "y")


def _divergence(xp, *arrays, names, **params):
    """``S = W(x, y) - (W(x, x) + W(y, y)) / 2``: two symmetric solves, whose potentials
    warm-start the cross term (for at most ``WARM_BUDGET`` iterations, then the epsilon
    schedule from zero); residuals: the three solves' ``concat(f, g)``."""
    d = dict(zip(names, arrays))
    fgs, values = [], []
    for cloud, weight in (("x", "a"), ("y", "b")):
        self_arrays, self_names = _self_problem(xp, d, cloud, weight)
        f, _, _ = _symmetric(xp, *self_arrays, names=self_names, **params)
        fgs.append(xp.concat([f, f], axis=-1))
        values.append(_value_at(xp, *self_arrays, fgs[-1], names=self_names)[0])
    f, g = fgs[0][..., : d["x"].shape[-2]], fgs[1][..., : d["y"].shape[-2]]
    f, g = balanced(xp, f, g)  # two problems' potentials, levelled into one warm start
    # a warm start that stalls (separated clouds at a small epsilon: plain iterations contract too
    # slowly) gives way, after WARM_BUDGET iterations, to the epsilon schedule from zero
    warm = {**params, "scaling": False, "max_iter": min(params["max_iter"], WARM_BUDGET)}
    (f, g, error, _), _ = _potentials(xp, *arrays, f, g, names=names, **warm, has_init=True, warn=False)

    def from_zero(state: tuple) -> tuple:
        (f, g, _, _), _ = _potentials(xp, *arrays, names=names, **params, what="sinkhorn_divergence")
        return xp.ones_like(state[0]), f, g

    _, f, g = while_loop(xp, lambda state: xp.logical_not(state[0]), from_zero, (error <= params["tol"], f, g))  # once at most
    fg = xp.concat([f, g], axis=-1)
    cross = _value_at(xp, *arrays, fg, names=names)[0]
    return cross - 0.5 * (values[0] + values[1]), (fg, *fgs)


def _divergence_vjp(xp, arrays, residuals, cotangent, *, names, **params):
    """The envelope gradients of the three values, added up per input."""
    d = dict(zip(names, arrays))
    fg, fg_xx, fg_yy = residuals
    params = {**params, "online": True}  # blockwise envelope gradients: no cost matrix, no plan formed
    total = dict(zip(names, _value_at_vjp(xp, (*arrays, fg), (), cotangent, names=names, **params)[:-1]))
    for cloud, weight, fg_self in (("x", "a", fg_xx), ("y", "b", fg_yy)):
        self_arrays, self_names = _self_problem(xp, d, cloud, weight)
        grads = _value_at_vjp(xp, (*self_arrays, fg_self), (), -0.5 * cotangent, names=self_names, **params)
        total[cloud] = total[cloud] + grads[0] + grads[1]
        if weight in d:
            total[weight] = total[weight] + grads[2] + grads[3]
    return tuple(total[name] for name in names)


DIVERGENCE = CoreOp("sinkhorn_divergence", _divergence, _divergence_vjp)
POTENTIALS = CoreOp("sinkhorn_potentials", _potentials, _potentials_vjp, n_out=4)
VALUE_AT = CoreOp("sinkhorn_value", _value_at, _value_at_vjp)
PLAN_AT = CoreOp("sinkhorn_plan", _plan_at, _plan_at_vjp)
APPLY_AT = CoreOp("sinkhorn_apply", _apply_at, _apply_at_vjp)
COST = _solving("sinkhorn_cost", VALUE_AT)
PLAN = _solving("sinkhorn_plan", PLAN_AT)
APPLY = CoreOp("sinkhorn_apply", _apply_solving, _apply_solving_vjp)
