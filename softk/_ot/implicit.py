"""Implicit differentiation of the entropic plan: the Schur system and its two solvers.

The marginal constraints ``P 1 = a``, ``P^T 1 = b`` define the potentials, so
their derivatives solve a linear system with matrix
``H = [[diag(a), P], [P^T, diag(b)]]`` (singular along ``(1, -1)``). Every
gradient of the engine that is not an envelope gradient goes through it:
eliminating the source block leaves the Schur complement
``K = diag(b) - P^T diag(1/a) P``, solved directly (gauge ``w_m = 0``) for at
most ``SCHUR_MAX`` targets and by conjugate gradients (two O(n m) products a
step) beyond. The maths is in ``docs/maths.md`` (entropic OT, gradients).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._dispatch import while_loop
from .._xp import matvec, matvec_t

__all__ = ["SCHUR_MAX", "schur_method", "plan_vjp", "potentials_vjp", "schur_solve", "gauged_solve", "diagonal_cg"]

SCHUR_MAX = 128  # up to this many targets the Schur system is solved directly, conjugate gradients beyond


def schur_method(m: int) -> str:
    """``"schur"`` (direct) for at most ``SCHUR_MAX`` targets, else ``"cg"``."""
    return "schur" if m <= SCHUR_MAX else "cg"


def plan_vjp(
    xp: Any,
    plan: Any,
    cotangent: Any,
    epsilon: float,
    *,
    method: str | None = None,
    with_weights: bool = False,
    cg_tol: float = 1e-10,
    cg_max_iter: int = 1000,
) -> Any:
    """Gradient w.r.t. the cost of ``<V, P(C)>``, by implicit differentiation.

    Differentiating the marginal constraints gives a linear system in
    ``(df, dg)`` with matrix ``H = [[diag(a), P], [P^T, diag(b)]]``, singular
    along ``(1, -1)``. Its adjoint solution ``H (u, w) = (alpha, beta)``,
    ``alpha = (V * P) 1``, ``beta = (V * P)^T 1``, gives
    ``dL/dC = P * (u_i + w_j - V_ij) / eps``, ``dL/da = u`` and ``dL/db = w``
    (the latter two returned with ``with_weights=True``; they are defined up
    to ``(u + c, w - c)``). Eliminating ``u`` leaves the Schur complement
    ``K w = beta - P^T (alpha / a)`` with ``K = diag(b) - P^T diag(1/a) P``:

    ``method`` defaults to :func:`schur_method` of the number of targets.

    * ``method="schur"``: fix ``w_m = 0`` and solve the (m-1) x (m-1) system
      directly. Cost O(n m^2 + m^3): for few targets.
    * ``method="cg"``: conjugate gradients on ``K`` itself (positive
      semi-definite, its null space ``1`` is orthogonal to the right-hand
      side), Jacobi-preconditioned by ``diag(b)``, two O(n m) matvecs per
      step, stopped at relative residual ``cg_tol`` or ``cg_max_iter`` steps.

    Memory O(n m) either way. The marginals ``a``, ``b`` are read off ``plan``
    itself, so the system is the exact Hessian at the returned plan even
    before convergence.
    """
    weighted = cotangent * plan
    alpha = xp.sum(weighted, axis=-1)
    beta = xp.sum(weighted, axis=-2)
    del weighted
    a = xp.sum(plan, axis=-1)
    b = xp.sum(plan, axis=-2)
    rhs = beta - matvec_t(xp, plan, alpha / a)
    w = schur_solve(xp, plan, a, b, rhs, method=method, cg_tol=cg_tol, cg_max_iter=cg_max_iter)
    u = (alpha - matvec(xp, plan, w)) / a
    grad = plan * (u[..., :, None] + w[..., None, :] - cotangent) / epsilon
    return (grad, u, w) if with_weights else grad


def potentials_vjp(xp: Any, plan: Any, f: Any, g: Any, cot_f: Any, cot_g: Any, epsilon: float) -> tuple:
    """Gradients of ``<cot_f, f> + <cot_g, g>`` for the optimal potentials in the gauge ``<f, a> = <g, b>``.

    The gauge is the shift ``(f + c, g - c)``, ``c = (<g, b> - <f, a>) / 2``,
    that splits the value ``<f, a> + <g, b>`` equally; the adjoint of that
    projection makes the cotangent orthogonal to the null space ``(1, -1)`` of
    ``H``. Then ``H (u, w) = (cot_f, cot_g)`` and, with ``a, b`` read off ``plan``::

        dL/dC_ij = P_ij (u_i + w_j),  dL/da_i = -eps (P w)_i / a_i - s f_i,  dL/db_j = -eps (P^T u)_j / b_j + s g_j,

    ``s = (sum cot_f - sum cot_g) / 2`` (the last terms: ``c`` depends on the
    weights). Returns ``(grad_cost, grad_a, grad_b)``.
    """
    a = xp.sum(plan, axis=-1)
    b = xp.sum(plan, axis=-2)
    s = 0.5 * (xp.sum(cot_f, axis=-1, keepdims=True) - xp.sum(cot_g, axis=-1, keepdims=True))
    cot_f, cot_g = cot_f - s * a, cot_g + s * b  # adjoint of the gauge projection
    w = schur_solve(xp, plan, a, b, cot_g - matvec_t(xp, plan, cot_f / a))
    u = (cot_f - matvec(xp, plan, w)) / a
    grad_cost = plan * (u[..., :, None] + w[..., None, :])
    grad_a = -epsilon * matvec(xp, plan, w) / a - s * f
    grad_b = -epsilon * matvec_t(xp, plan, u) / b + s * g
    return grad_cost, grad_a, grad_b


def schur_solve(
    xp: Any, plan: Any, a: Any, b: Any, rhs: Any, *, method: str | None = None, cg_tol: float = 1e-10, cg_max_iter: int = 1000
) -> Any:
    """``w`` with ``(diag(b) - P^T diag(1/a) P) w = rhs`` (``rhs`` orthogonal to ``1``).

    ``method="schur"``: the gauge ``w_m = 0`` and a direct solve, O(n m^2 + m^3);
    ``method="cg"``: Jacobi-preconditioned conjugate gradients, two O(n m)
    matrix-vector products per step (see :func:`plan_vjp`).
    """
    if (method or schur_method(plan.shape[-1])) == "cg":
        return _schur_cg(xp, plan, a, b, rhs, cg_tol, cg_max_iter)
    head = plan[..., : plan.shape[-1] - 1]
    return gauged_solve(xp, xp.matrix_transpose(head) @ (head / a[..., :, None]), b, rhs)


def gauged_solve(xp: Any, s: Any, b: Any, rhs: Any) -> Any:
    """``(diag(b) - S) w = rhs`` in the gauge ``w_m = 0`` (the system is singular along ``1``),
    by a direct solve; ``S = P^T diag(1/a) P`` needs only its leading ``(m-1, m-1)`` block."""
    m = b.shape[-1]
    eye = xp.eye(m - 1, dtype=b.dtype, device=device(b))
    k = eye * b[..., None, : m - 1] - s[..., : m - 1, : m - 1]
    # K is singular when the plan is a hard assignment (tiny eps); the true gradient is
    # then ~0, and a ridge of one ulp of the marginals keeps the solve finite.
    k = k + eye * (xp.finfo(b.dtype).eps * xp.max(b, axis=-1, keepdims=True)[..., None])
    w_head = xp.squeeze(xp.linalg.solve(k, rhs[..., : m - 1, None]), axis=-1)
    return xp.concat([w_head, xp.zeros_like(w_head[..., :1])], axis=-1)


def _schur_cg(xp: Any, plan: Any, a: Any, b: Any, rhs: Any, tol: float, max_iter: int) -> Any:
    """Preconditioned CG for ``(diag(b) - P^T diag(1/a) P) w = rhs``, batched."""
    return diagonal_cg(xp, lambda w: b * w - matvec_t(xp, plan, matvec(xp, plan, w) / a), b, rhs, tol, max_iter)


def diagonal_cg(xp: Any, operator: Any, b: Any, rhs: Any, tol: float, max_iter: int) -> Any:
    """Conjugate gradients for ``operator(w) = rhs`` (symmetric positive semi-definite, batched
    over leading dimensions), preconditioned by ``diag(b)``; stops at a relative residual
    ``tol`` (in the ``diag(1/b)`` norm) or after ``max_iter`` steps."""

    def dot(x: Any, y: Any) -> Any:
        return xp.sum(x * y, axis=-1, keepdims=True)

    tiny = xp.asarray(xp.finfo(b.dtype).smallest_normal, dtype=b.dtype, device=device(b))
    stop = (tol * tol) * xp.max(dot(rhs, rhs / b))
    z = rhs / b
    rz = dot(rhs, z)

    def cond(state: tuple) -> Any:
        it, _, _, _, rz = state
        return xp.logical_and(it < max_iter, xp.max(rz) > stop)

    def body(state: tuple) -> tuple:
        it, w, r, p, rz = state
        kp = operator(p)
        step = rz / xp.maximum(dot(p, kp), tiny)
        w = w + step * p
        r = r - step * kp
        z = r / b
        rz_new = dot(r, z)
        p = z + (rz_new / xp.maximum(rz, tiny)) * p
        return it + 1, w, r, p, rz_new

    state = (xp.asarray(0, device=device(b)), xp.zeros_like(rhs), rhs, z, rz)
    return while_loop(xp, cond, body, state, traceable=True)[1]
