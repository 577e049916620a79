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
from ._xp import logsumexp

__all__ = ["SinkhornResult", "sinkhorn_log", "plan_from_potentials", "plan_vjp"]


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
) -> SinkhornResult:
    """Log-domain Sinkhorn iterations on ``cost`` of shape ``(..., n, m)``.

    ``log_a`` (..., n) and ``log_b`` (..., m) are log weights (each summing to one).

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

    def f_update(g: Any) -> Any:
        return -epsilon * logsumexp(xp, log_b[..., None, :] + (g[..., None, :] - cost) / epsilon, axis=-1)

    def g_update(f: Any) -> Any:
        return -epsilon * logsumexp(xp, log_a[..., :, None] + (f[..., :, None] - cost) / epsilon, axis=-2)

    def cond(state: tuple) -> Any:
        it, _, _, err = state
        return xp.logical_and(it < max_iter, err > tol)

    def body(state: tuple) -> tuple:
        it, f, g, _ = state
        for _ in range(check_every):
            f = f_update(g)
            g = g_update(f)
        row_sums = a * xp.exp((f - f_update(g)) / epsilon)
        err = xp.max(xp.sum(xp.abs(row_sums - a), axis=-1))
        return it + check_every, f, g, err

    dev = device(cost)
    f0 = xp.zeros(log_a.shape, dtype=cost.dtype, device=dev)
    g0 = xp.zeros(log_b.shape, dtype=cost.dtype, device=dev)
    inf = xp.asarray(float("inf"), dtype=cost.dtype, device=dev)
    it, f, g, err = while_loop(xp, cond, body, (xp.asarray(0, device=dev), f0, g0, inf))
    return SinkhornResult(f, g, err, it, err <= tol)


def plan_from_potentials(
    xp: Any, cost: Any, log_a: Any, log_b: Any, f: Any, g: Any, epsilon: float
) -> Any:
    """``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``."""
    return xp.exp(log_a[..., :, None] + log_b[..., None, :] + (f[..., :, None] + g[..., None, :] - cost) / epsilon)


def plan_vjp(xp: Any, plan: Any, cotangent: Any, epsilon: float) -> Any:
    """Gradient w.r.t. the cost of ``<V, P(C)>``, by implicit differentiation.

    Differentiating the marginal constraints gives a linear system in
    ``(df, dg)`` with matrix ``[[diag(a), P], [P^T, diag(b)]]``, singular along
    ``(1, -1)``. Fixing the last target's potential, its Schur complement
    ``K = diag(b~) - P~^T diag(1/a) P~`` ((m-1) x (m-1)) is solved with a linear
    solve, then ``dL/dC = P * (u_i + w_j - V_ij) / eps``. Cost O(n m^2 + m^3),
    memory O(n m). The marginals ``a``, ``b`` are read off ``plan`` itself, so the
    system is the exact Hessian at the returned plan even before convergence.
    """
    weighted = cotangent * plan
    alpha = xp.sum(weighted, axis=-1)
    beta = xp.sum(weighted, axis=-2)
    a = xp.sum(plan, axis=-1)
    b = xp.sum(plan, axis=-2)
    m = plan.shape[-1]
    head = plan[..., : m - 1]
    head_t = xp.matrix_transpose(head)
    eye = xp.eye(m - 1, dtype=plan.dtype, device=device(plan))
    schur = eye * b[..., None, : m - 1] - head_t @ (head / a[..., :, None])
    rhs = beta[..., : m - 1] - xp.squeeze(head_t @ (alpha / a)[..., :, None], axis=-1)
    w_head = xp.squeeze(xp.linalg.solve(schur, rhs[..., None]), axis=-1)
    w = xp.concat([w_head, xp.zeros_like(w_head[..., :1])], axis=-1)
    u = (alpha - xp.squeeze(plan @ w[..., :, None], axis=-1)) / a
    return plan * (u[..., :, None] + w[..., None, :] - cotangent) / epsilon
