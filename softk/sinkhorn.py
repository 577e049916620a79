"""Log-domain, batched Sinkhorn for a general cost, and the implicit VJP of its plan.

Problem (methods.md section 1), for each leading batch index::

    min_P <P, C> + eps * sum_ij P_ij (log P_ij - log a_i b_j),  P 1 = a, P^T 1 = b,

solved by alternating ``f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps)`` and
``g_j = -eps LSE_i(log a_i + (f_i - C_ij) / eps)``; the plan is
``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``. After each g-update the column
marginals are exact; every ``check_every`` iterations the row-marginal error
``||P 1 - a||_1`` is measured, and the loop stops when it is ``<= tol`` for
every batch entry or after ``max_iter`` iterations (``converged`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from ._dispatch import while_loop
from ._xp import logsumexp, matvec, matvec_t, normal_exponent

__all__ = ["SinkhornResult", "sinkhorn_log", "sinkhorn_block", "plan_from_potentials", "plan_vjp", "schur_solve", "flushed_exp"]


@dataclass(frozen=True)
class SinkhornResult:
    """Potentials ``f`` (..., n), ``g`` (..., m); ``error`` is the worst row-marginal
    L1 error over the batch, ``n_iter`` the iterations run (0-d arrays)."""

    f: Any
    g: Any
    error: Any
    n_iter: Any
    converged: Any


def sinkhorn_log(
    xp: Any,
    cost: Any,
    log_a: Any,
    log_b: Any,
    epsilon: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 10_000,
    check_every: int = 10,
    init: tuple[Any, Any] | None = None,
) -> SinkhornResult:
    """Log-domain Sinkhorn iterations on ``cost`` of shape ``(..., n, m)``.

    ``log_a`` (..., n) and ``log_b`` (..., m) are log weights (each summing to one);
    ``init = (f, g)`` warm-starts from given potentials (default zeros). ``epsilon``
    may also be a 0-d array (the epsilon-scaling stages of :mod:`softk.scaling`).

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> w = np.log(np.array([0.5, 0.5]))
    >>> r = sinkhorn_log(np, C, w, w, 0.1, tol=1e-12)
    >>> P = plan_from_potentials(np, C, w, w, r.f, r.g, 0.1)
    >>> np.round(P, 4).tolist(), bool(r.converged)
    ([[0.5, 0.0], [0.0, 0.5]], True)
    """
    a = xp.exp(log_a)

    def body(state: tuple) -> tuple:
        it, f, g, _ = state
        f, g, err = sinkhorn_block(xp, cost, log_a, log_b, a, f, g, epsilon, check_every)
        return it + check_every, f, g, err

    def cond(state: tuple) -> Any:
        it, _, _, err = state
        return xp.logical_and(it < max_iter, err > tol)

    dev = device(cost)
    if init is None:
        f0 = xp.zeros(log_a.shape, dtype=cost.dtype, device=dev)
        g0 = xp.zeros(log_b.shape, dtype=cost.dtype, device=dev)
    else:
        f0, g0 = init
    inf = xp.asarray(float("inf"), dtype=cost.dtype, device=dev)
    it, f, g, err = while_loop(xp, cond, body, (xp.asarray(0, device=dev), f0, g0, inf))
    return SinkhornResult(f, g, err, it, err <= tol)


def sinkhorn_block(xp: Any, cost: Any, log_a: Any, log_b: Any, a: Any, f: Any, g: Any, epsilon: Any, steps: int) -> tuple:
    """``steps`` log-domain iterations from ``g``; returns ``(f, g, worst row-marginal L1 error)``."""

    def f_update(g: Any) -> Any:
        return -epsilon * logsumexp(xp, log_b[..., None, :] + (g[..., None, :] - cost) / epsilon, axis=-1)

    def g_update(f: Any) -> Any:
        return -epsilon * logsumexp(xp, log_a[..., :, None] + (f[..., :, None] - cost) / epsilon, axis=-2)

    for _ in range(steps):
        f = f_update(g)
        g = g_update(f)
    row_sums = a * xp.exp((f - f_update(g)) / epsilon)
    return f, g, xp.max(xp.sum(xp.abs(row_sums - a), axis=-1))


def flushed_exp(xp: Any, z: Any) -> Any:
    """``exp(z)`` for ``z <= 0``, with results below the smallest normal number set to 0.

    On CPUs the vectorised exponential falls back to a scalar path, 20-60x
    slower, for arguments whose result is subnormal or underflows; the
    arguments are clipped first, and those entries (at most ~1e-38 in float32,
    ~1e-307 in float64, relative to the largest) become exact zeros.
    """
    floor = 1.0 - normal_exponent(xp, z.dtype)
    return xp.where(z >= floor, xp.exp(xp.clip(z, min=floor)), 0.0)


def plan_from_potentials(
    xp: Any, cost: Any, log_a: Any, log_b: Any, f: Any, g: Any, epsilon: float
) -> Any:
    """``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` (subnormal entries flushed to zero)."""
    return flushed_exp(xp, log_a[..., :, None] + log_b[..., None, :] + (f[..., :, None] + g[..., None, :] - cost) / epsilon)


def plan_vjp(
    xp: Any,
    plan: Any,
    cotangent: Any,
    epsilon: float,
    *,
    method: str = "schur",
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


def schur_solve(
    xp: Any, plan: Any, a: Any, b: Any, rhs: Any, *, method: str = "schur", cg_tol: float = 1e-10, cg_max_iter: int = 1000
) -> Any:
    """``w`` with ``(diag(b) - P^T diag(1/a) P) w = rhs`` (``rhs`` orthogonal to ``1``).

    ``method="schur"``: the gauge ``w_m = 0`` and a direct solve, O(n m^2 + m^3);
    ``method="cg"``: Jacobi-preconditioned conjugate gradients, two O(n m)
    matrix-vector products per step (see :func:`plan_vjp`).
    """
    if method == "cg":
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
    return while_loop(xp, cond, body, state)[1]
