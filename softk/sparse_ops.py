"""The operators at a solution of sparsity-constrained OT, with their VJPs (:mod:`softk.sparse_ot`).

* ``VALUE_AT`` / ``PLAN_AT``: the (semi-)dual objective and the plan read off the
  dual variables ``packed`` (``alpha``, ``beta``, ...). Objective: envelope
  theorem, ``dF/dC = P``, ``dF/da = alpha``, ``dF/db = beta``. Plan: implicit
  differentiation of the marginal constraints with the support of ``P`` held
  fixed (one conjugate-gradient solve with the sparse Hessian of
  :mod:`softk.sparse_newton`).
* ``FIXED_VALUE`` / ``FIXED_PLAN``: the same for a repaired plan given by its
  entries ``mass`` at rows ``idx`` (:mod:`softk.sparse_repair`) and dual variables
  ``duals`` on its support: the value ``<P, C> + (gamma / 2) ||P||^2`` and the
  derivatives of the quadratic problem restricted to that support.
"""

from __future__ import annotations

from array_api_compat import device

from ._op import CoreOp
from .sparse_newton import Support, conjugate_gradients, evaluate, hessian_products
from .sparse_projection import scatter_last

__all__ = ["VALUE_AT", "PLAN_AT", "FIXED_VALUE", "FIXED_PLAN", "dense", "stop_gradient"]

GRAD_TOL = 1e-12  # relative residual of the plan VJP's conjugate-gradient solve


def _at(xp, cost, a, b, packed, k, gamma, formulation):
    """Objective, plan entries ``mass`` (..., m, k) at rows ``idx`` and their positivity, at the solution."""
    n, m = cost.shape[-2:]
    dual = formulation == "dual"
    x = packed[..., : n + m] if dual else packed[..., :n]
    gam = xp.full(cost.shape[:-2], gamma, dtype=cost.dtype, device=device(cost))
    a = xp.broadcast_to(a, (*cost.shape[:-2], n))
    b = xp.broadcast_to(b, (*cost.shape[:-2], m))
    objective, _, mass, idx, weight = evaluate(xp, xp.matrix_transpose(cost), a, b, x, gam, k, dual)
    return objective, mass, idx, weight


def dense(xp, mass, idx, n):
    """The plan ``(..., n, m)`` from its entries ``mass`` (..., m, k) at rows ``idx``."""
    return xp.matrix_transpose(scatter_last(xp, mass, idx, n))


def stop_gradient(xp, arrays, residuals, cotangent, **_):
    return (None,) * len(arrays)


def _value_at(xp, cost, a, b, packed, *, k, gamma, formulation, **_):
    objective, mass, idx, _ = _at(xp, cost, a, b, packed, k, gamma, formulation)
    return objective, (mass, idx)


def _value_at_vjp(xp, arrays, residuals, cotangent, *, k, gamma, formulation, **_):
    cost, a, b, packed = arrays
    mass, idx = residuals
    n, m = cost.shape[-2:]
    v = cotangent[..., None]
    return (cotangent[..., None, None] * dense(xp, mass, idx, n), v * packed[..., :n], v * packed[..., n : n + m], None)


def _plan_at(xp, cost, a, b, packed, *, k, gamma, formulation, **_):
    _, mass, idx, weight = _at(xp, cost, a, b, packed, k, gamma, formulation)
    return dense(xp, mass, idx, cost.shape[-2]), (idx, weight)


def _plan_at_vjp(xp, arrays, residuals, cotangent, *, gamma, formulation, **_):
    """Implicit VJP on the fixed support (module docstring); ``y`` solves the Hessian system."""
    cost = arrays[0]
    idx, weight = residuals
    n, m = cost.shape[-2:]
    dual = formulation == "dual"
    support = Support(xp, idx, n)
    gs = xp.take_along_axis(xp.matrix_transpose(cotangent), idx, axis=-1)  # G at the support, (..., m, k)
    size = xp.maximum(xp.sum(weight, axis=-1, keepdims=True), xp.ones_like(weight[..., :1]))

    def centred(t):
        return weight * (t - xp.sum(weight * t, axis=-1, keepdims=True) / size)

    matvec, diag = hessian_products(xp, support, weight, dual, n)
    if dual:
        rhs = xp.concat([support.rowsum(weight * gs), xp.sum(weight * gs, axis=-1)], axis=-1)
    else:
        rhs = support.rowsum(centred(gs))
    scale = xp.maximum(xp.mean(diag, axis=-1), xp.ones_like(rhs[..., 0]))
    y = conjugate_gradients(xp, matvec, diag, rhs, GRAD_TOL * scale, xp.full_like(rhs[..., 0], GRAD_TOL))
    ya = y[..., :n]
    if dual:
        yb = y[..., n:]
        grad_ct = weight * (support.gather(ya) + yb[..., None] - gs) / gamma
    else:
        ys = support.gather(ya)
        grad_ct = centred(ys - gs) / gamma
        yb = xp.sum(weight * (gs - ys), axis=-1) / size[..., 0]
    grad_cost = dense(xp, grad_ct, idx, n)
    return grad_cost, ya, yb, None


VALUE_AT = CoreOp("sparse_ot_value", _value_at, _value_at_vjp)
PLAN_AT = CoreOp("sparse_ot_plan", _plan_at, _plan_at_vjp)


def _fixed_plan(xp, cost, a, b, mass, idx, duals, **_):
    return dense(xp, mass, idx, cost.shape[-2]), (xp.astype(mass > 0.0, cost.dtype),)


def _fixed_plan_vjp(xp, arrays, residuals, cotangent, *, gamma, **_):
    """The repaired plan's VJP: the implicit one of the quadratic problem restricted to its support."""
    support = (arrays[4], residuals[0])
    return (*_plan_at_vjp(xp, arrays, support, cotangent, gamma=gamma, formulation="dual")[:3], None, None, None)


def _fixed_value(xp, cost, a, b, mass, idx, duals, *, gamma, **_):
    """``<P, C> + (gamma / 2) ||P||^2`` of the repaired plan."""
    plan = dense(xp, mass, idx, cost.shape[-2])
    return xp.sum(plan * cost, axis=(-2, -1)) + 0.5 * gamma * xp.sum(mass * mass, axis=(-2, -1)), (plan,)


def _fixed_value_vjp(xp, arrays, residuals, cotangent, **_):
    n, v = arrays[0].shape[-2], cotangent[..., None]
    duals = arrays[-1]
    return cotangent[..., None, None] * residuals[0], v * duals[..., :n], v * duals[..., n:], None, None, None


FIXED_PLAN = CoreOp("sparse_ot_repaired_plan", _fixed_plan, _fixed_plan_vjp)
FIXED_VALUE = CoreOp("sparse_ot_repaired_value", _fixed_value, _fixed_value_vjp)
