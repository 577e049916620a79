"""The operators on a plan of sparsity-constrained OT, with their VJPs (:mod:`softk.sparse_ot`).

The plan is given by its entries ``mass`` (..., m, k) at rows ``idx`` of each
column and dual variables ``duals = (alpha, beta)`` on its support (the dual
readout, or the repaired plan of :mod:`softk.sparse_repair`):

* ``FIXED_VALUE``: ``<P, C> + (gamma / 2) ||P||^2``; envelope theorem,
  ``dF/dC = P``, ``dF/da = alpha``, ``dF/db = beta``;
* ``FIXED_PLAN``: ``P``; implicit differentiation of the quadratic problem
  restricted to the plan's support (``P_ij = (alpha_i + beta_j - C_ij) / gamma``
  there, marginals ``a``, ``b``): one conjugate-gradient solve with its
  bipartite-Laplacian Hessian (:mod:`softk.sparse_newton`).
"""

from __future__ import annotations

from ._op import CoreOp
from .sparse_newton import Support, conjugate_gradients, hessian_products
from .sparse_projection import scatter_last

__all__ = ["FIXED_VALUE", "FIXED_PLAN", "dense", "stop_gradient"]

GRAD_TOL = 1e-12  # relative residual of the plan VJP's conjugate-gradient solve


def dense(xp, mass, idx, n):
    """The plan ``(..., n, m)`` from its entries ``mass`` (..., m, k) at rows ``idx``."""
    return xp.matrix_transpose(scatter_last(xp, mass, idx, n))


def stop_gradient(xp, arrays, residuals, cotangent, **_):
    return (None,) * len(arrays)


def _support_vjp(xp, cost, idx, weight, cotangent, gamma):
    """Implicit VJP of the plan on a fixed support (module docstring): ``y`` solves the Hessian system."""
    n = cost.shape[-2]
    support = Support(xp, idx, n)
    gs = xp.take_along_axis(xp.matrix_transpose(cotangent), idx, axis=-1)  # G at the support, (..., m, k)
    matvec, diag = hessian_products(xp, support, weight, True, n)
    rhs = xp.concat([support.rowsum(weight * gs), xp.sum(weight * gs, axis=-1)], axis=-1)
    scale = xp.maximum(xp.mean(diag, axis=-1), xp.ones_like(rhs[..., 0]))
    y = conjugate_gradients(xp, matvec, diag, rhs, GRAD_TOL * scale, xp.full_like(rhs[..., 0], GRAD_TOL))
    ya, yb = y[..., :n], y[..., n:]
    grad_ct = weight * (support.gather(ya) + yb[..., None] - gs) / gamma
    return dense(xp, grad_ct, idx, n), ya, yb


def _fixed_plan(xp, cost, a, b, mass, idx, duals, **_):
    return dense(xp, mass, idx, cost.shape[-2]), (xp.astype(mass > 0.0, cost.dtype),)


def _fixed_plan_vjp(xp, arrays, residuals, cotangent, *, gamma, **_):
    """The plan's VJP: the implicit one of the quadratic problem restricted to its support."""
    return (*_support_vjp(xp, arrays[0], arrays[4], residuals[0], cotangent, gamma), None, None, None)


def _fixed_value(xp, cost, a, b, mass, idx, duals, *, gamma, **_):
    """``<P, C> + (gamma / 2) ||P||^2`` of the plan."""
    plan = dense(xp, mass, idx, cost.shape[-2])
    return xp.sum(plan * cost, axis=(-2, -1)) + 0.5 * gamma * xp.sum(mass * mass, axis=(-2, -1)), (plan,)


def _fixed_value_vjp(xp, arrays, residuals, cotangent, **_):
    n, v = arrays[0].shape[-2], cotangent[..., None]
    duals = arrays[-1]
    return cotangent[..., None, None] * residuals[0], v * duals[..., :n], v * duals[..., n:], None, None, None


FIXED_PLAN = CoreOp("sparse_ot_plan_at", _fixed_plan, _fixed_plan_vjp)
FIXED_VALUE = CoreOp("sparse_ot_value_at", _fixed_value, _fixed_value_vjp)
