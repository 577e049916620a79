"""Blockwise plan products: the plan ``P`` of an entropic OT problem is never formed.

The plan ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` is produced in row
blocks of ``BLOCK_ENTRIES`` entries (:class:`PlanBlocks`), from a cost matrix
or, for point clouds with the squared Euclidean cost, from one small matrix
product per block: with ``||x_i - y_j||^2 = |x_i|^2 + |y_j|^2 - 2 x_i.y_j``,

    log P_ij = [x_i, r_i, 1] . [2 y_j / eps, 1, c_j],
    r_i = log a_i + (f_i - |x_i|^2) / eps,   c_j = log b_j + (g_j - |y_j|^2) / eps,

a product of inner dimension ``d + 2`` (the clouds are first translated to a
common centre, which leaves the cost unchanged and keeps ``|x|^2 / eps`` small).
Memory is O(n + m) plus one block; a block of a few MB stays in cache between
the product, the exponential and the sums.

:func:`apply` gives ``P V``; :func:`apply_vjp` its VJP: ``P^T G`` for ``V``
and, for the problem, the implicit VJP of the plan contracted with the rank-k
cotangent ``G V^T`` (docs/maths.md section 1) with matvecs only: one pass for the
right-hand side, the Schur complement accumulated blockwise (at most
``SCHUR_MAX`` targets) or conjugate gradients with one pass per step, and one
last pass for the gradients. :func:`value_vjp` is the gradient of the
regularised cost for point clouds. The online solver is :mod:`softk._ot.online`.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._xp import matvec, matvec_t
from .implicit import SCHUR_MAX, diagonal_cg, gauged_solve
from .plan import clipped_exp

__all__ = ["PlanBlocks", "apply", "apply_vjp", "value_vjp", "plan_products", "centred", "rows_per_block", "accumulate", "concat_parts", "BLOCK_ENTRIES", "SCHUR_MAX"]

BLOCK_ENTRIES = 2**19  # plan entries per block (4 MB in float64: cache-sized)


def rows_per_block(m: int) -> int:
    """Rows of an ``m``-column plan in one block of ``BLOCK_ENTRIES`` entries."""
    return max(1, BLOCK_ENTRIES // max(m, 1))


def _spans(n: int, m: int) -> list[tuple[int, int]]:
    rows = rows_per_block(m)
    return [(start, min(start + rows, n)) for start in range(0, n, rows)]


def centred(xp: Any, x: Any, y: Any) -> tuple[Any, Any]:
    """``x`` and ``y`` translated by the centre of their common bounding box (the cost is unchanged)."""
    low = xp.minimum(xp.min(x, axis=-2, keepdims=True), xp.min(y, axis=-2, keepdims=True))
    high = xp.maximum(xp.max(x, axis=-2, keepdims=True), xp.max(y, axis=-2, keepdims=True))
    centre = 0.5 * (low + high)
    return x - centre, y - centre


def _ones(xp: Any, like: Any) -> Any:
    return xp.ones((*like.shape[:-1], 1), dtype=like.dtype, device=device(like))


class PlanBlocks:
    """Row blocks of ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``, from ``cost`` or from clouds ``x, y``.

    ``x, y`` (..., n, d), (..., m, d) must already share the batch shape of
    ``log_a``/``log_b``; ``block(start, stop)`` returns rows ``start:stop``
    (..., rows, m).
    """

    def __init__(self, xp: Any, log_a: Any, log_b: Any, f: Any, g: Any, eps: Any, *, cost: Any = None, x: Any = None, y: Any = None):
        self.xp, self.eps, self.cost = xp, eps, cost
        self.n, self.m = log_a.shape[-1], log_b.shape[-1]
        if cost is None:
            xc, yc = centred(xp, x, y)
            row = log_a + (f - xp.sum(xc * xc, axis=-1)) / eps
            col = log_b + (g - xp.sum(yc * yc, axis=-1)) / eps
            self.left = xp.concat([xc, row[..., None], _ones(xp, xc)], axis=-1)
            self.right_t = xp.matrix_transpose(xp.concat([yc * (2.0 / eps), _ones(xp, yc), col[..., None]], axis=-1))
        else:
            self.row = log_a + f / eps
            self.col = (log_b + g / eps)[..., None, :]

    def spans(self) -> list[tuple[int, int]]:
        return _spans(self.n, self.m)

    def log_block(self, start: int, stop: int) -> Any:
        if self.cost is None:
            return self.left[..., start:stop, :] @ self.right_t
        z = self.cost[..., start:stop, :] / (-self.eps)
        z = z + self.row[..., start:stop, None]
        return z + self.col

    def block(self, start: int, stop: int) -> Any:
        return clipped_exp(self.xp, self.log_block(start, stop))


def accumulate(total: Any, part: Any) -> Any:
    """``total + part``, where ``total`` None starts the sum."""
    return part if total is None else total + part


def concat_parts(xp: Any, parts: list, axis: int) -> Any:
    """The blocks' results joined along ``axis`` (no copy for a single block)."""
    return xp.concat(parts, axis=axis) if len(parts) > 1 else parts[0]


def plan_products(xp: Any, plan: PlanBlocks, right: Any, left: Any) -> tuple[Any, Any]:
    """``(P right, P^T left)`` in one pass; ``right`` (..., m, k), ``left`` (..., n, l)."""
    p_r, pt_l = [], None
    for start, stop in plan.spans():
        e = plan.block(start, stop)
        p_r.append(e @ right)
        pt_l = accumulate(pt_l, xp.matrix_transpose(e) @ left[..., start:stop, :])
    return concat_parts(xp, p_r, -2), pt_l


def apply(xp: Any, plan: PlanBlocks, v: Any) -> Any:
    """``P v`` for ``v`` (..., m, k), one block at a time.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y, v = rng.normal(size=(5, 2)), rng.normal(size=(4, 2)), rng.normal(size=(4, 3))
    >>> log_a, log_b, f, g = np.log(np.full(5, 0.2)), np.log(np.full(4, 0.25)), np.zeros(5), np.zeros(4)
    >>> plan = PlanBlocks(np, log_a, log_b, f, g, 0.5, x=x, y=y)
    >>> cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    >>> dense = np.exp(log_a[:, None] + log_b + (f[:, None] + g - cost) / 0.5)
    >>> bool(np.allclose(apply(np, plan, v), dense @ v))
    True
    """
    return concat_parts(xp, [plan.block(start, stop) @ v for start, stop in plan.spans()], -2)


def value_vjp(xp, x, y, log_a, log_b, f, g, eps, cotangent):
    """``(dW/dx, dW/dy)`` times the cotangent (shape: batch), blockwise: the
    squared Euclidean VJP of ``dW/dC = P``, ``2 (x * P 1 - P y)`` and ``2 (y * P^T 1 - P^T x)``."""
    x = xp.broadcast_to(x, (*log_a.shape, x.shape[-1]))
    y = xp.broadcast_to(y, (*log_b.shape, y.shape[-1]))
    plan = PlanBlocks(xp, log_a, log_b, f, g, eps, x=x, y=y)
    p_y1, pt_x1 = plan_products(xp, plan, xp.concat([y, _ones(xp, y)], axis=-1), xp.concat([x, _ones(xp, x)], axis=-1))
    cot = cotangent[..., None, None]
    grad_x = 2.0 * cot * (p_y1[..., -1:] * x - p_y1[..., :-1])
    grad_y = 2.0 * cot * (pt_x1[..., -1:] * y - pt_x1[..., :-1])
    return grad_x, grad_y


def apply_vjp(xp: Any, plan: PlanBlocks, v: Any, cot: Any, *, x: Any = None, y: Any = None, cg_tol: float = 1e-10, cg_max_iter: int = 1000) -> tuple:
    """VJP of ``P V`` (``V`` (..., m, k), cotangent ``cot`` (..., n, k)) without forming ``P``.

    Returns ``(grad_geometry, grad_log_a, grad_log_b, grad_v)``: ``grad_geometry``
    is ``(dx, dy)`` for clouds (``x, y`` given) or ``dC`` (formed, n x m, block
    by block) for a cost matrix; the weight gradients are w.r.t. the
    normalised weights, as :func:`softk._ot.implicit.plan_vjp` returns them.

    The plan's cotangent is ``G = cot V^T``. Pass 1: ``a = P 1``, ``b = P^T 1``,
    ``alpha = (G * P) 1 = sum_k cot * (P V)``, ``beta = (G * P)^T 1 = sum_k V * (P^T cot)``,
    ``rhs = beta - P^T (alpha / a)`` and ``P^T cot`` (the gradient for ``V``);
    then ``(diag(b) - P^T diag(1/a) P) w = rhs`` (Schur complement accumulated
    in pass 1 for at most ``SCHUR_MAX`` targets, else Jacobi-preconditioned
    conjugate gradients, one pass per step); last pass: ``u = (alpha - P w) / a``
    and ``dC = P * (u_i + w_j - G_ij) / eps`` block by block, contracted with
    the squared Euclidean VJP for clouds.
    """
    m = plan.m
    schur = m <= SCHUR_MAX
    a, alpha, b, pt_cot, pt_alpha, s = [], [], None, None, None, None
    for start, stop in plan.spans():
        e = plan.block(start, stop)
        a_b = xp.sum(e, axis=-1)
        alpha_b = xp.sum(cot[..., start:stop, :] * (e @ v), axis=-1)
        a.append(a_b)
        alpha.append(alpha_b)
        b = accumulate(b, xp.sum(e, axis=-2))
        pt_cot = accumulate(pt_cot, xp.matrix_transpose(e) @ cot[..., start:stop, :])
        pt_alpha = accumulate(pt_alpha, matvec_t(xp, e, alpha_b / a_b))
        if schur:
            s = accumulate(s, xp.matrix_transpose(e) @ (e / a_b[..., None]))
    a, alpha = concat_parts(xp, a, -1), concat_parts(xp, alpha, -1)
    rhs = xp.sum(v * pt_cot, axis=-1) - pt_alpha
    if schur:
        w = gauged_solve(xp, s, b, rhs)
    else:
        w = _cg(xp, plan, a, b, rhs, cg_tol, cg_max_iter)
    grad_c, grad_x, grad_y, u = [], [], None, []
    v_t = xp.matrix_transpose(v)
    for start, stop in plan.spans():
        e = plan.block(start, stop)
        u_b = (alpha[..., start:stop] - matvec(xp, e, w)) / a[..., start:stop]
        u.append(u_b)
        grad = e * ((u_b[..., :, None] + w[..., None, :] - cot[..., start:stop, :] @ v_t) / plan.eps)
        if x is None:
            grad_c.append(grad)
            continue
        xb = x[..., start:stop, :]
        grad_x.append(2.0 * (xb * xp.sum(grad, axis=-1)[..., None] - grad @ y))
        grad_y = accumulate(grad_y, 2.0 * (y * xp.sum(grad, axis=-2)[..., None] - xp.matrix_transpose(grad) @ xb))
    geometry = concat_parts(xp, grad_c, -2) if x is None else (concat_parts(xp, grad_x, -2), grad_y)
    return geometry, concat_parts(xp, u, -1), w, pt_cot


def _cg(xp: Any, plan: PlanBlocks, a: Any, b: Any, rhs: Any, tol: float, max_iter: int) -> Any:
    """Preconditioned CG for ``(diag(b) - P^T diag(1/a) P) w = rhs``, one blockwise pass per step."""

    def schur(w: Any) -> Any:
        out = b * w
        for start, stop in plan.spans():
            e = plan.block(start, stop)
            out = out - matvec_t(xp, e, matvec(xp, e, w) / a[..., start:stop])
        return out

    return diagonal_cg(xp, schur, b, rhs, tol, max_iter)
