"""Few-target entropic OT: Newton's method on the semi-dual, batched over leading dims.

With ``m`` targets (a few dozen at most) the problem of methods.md section 1
reduces to ``m`` unknowns. Eliminating ``f`` gives the concave semi-dual::

    F(g) = <g, b> - eps * sum_i a_i LSE_j(log b_j + (g_j - C_ij) / eps),
    grad F = b - sum_i a_i pi_i,   pi_ij = softmax_j(log b_j + (g_j - C_ij) / eps),
    Hess F = -(1/eps) sum_i a_i (diag(pi_i) - pi_i pi_i^T),

whose maximiser has exact column marginals ``P^T 1 = b`` for the plan
``P_ij = a_i pi_ij`` (rows are exact by construction). The Hessian is singular
along ``(1, ..., 1)``: the gauge ``g_m = 0`` leaves an ``(m-1) x (m-1)`` system,
solved with ``xp.linalg.solve``. Each iteration costs a few O(nm) log-domain
passes plus O(nm^2 + m^3); a backtracking (Armijo) line search makes every
step increase ``F``, a Levenberg damping proportional to the marginal error
keeps the system well posed far from the solution without slowing the final
quadratic convergence, and epsilon continuation (start at ``eps_start``,
shrink by ``shrink`` per stage, warm-started) keeps Newton in its fast regime
at tiny ``eps``. The result has the fields of :class:`softk.sinkhorn.SinkhornResult`
(so :func:`softk.sinkhorn.plan_from_potentials` and
:func:`softk.sinkhorn.plan_vjp` apply unchanged).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from ._dispatch import while_loop
from ._xp import logsumexp
from .sinkhorn import SinkhornResult

__all__ = ["semidual_newton", "semidual_plan"]

MAX_HALVINGS = 40
STAGE_TOL = 0.1  # relative column-marginal error at which an intermediate epsilon stage is left
DAMPING = 0.01  # Levenberg damping: this times the marginal error, relative to the mean Hessian diagonal


def semidual_plan(xp: Any, cost: Any, log_a: Any, log_b: Any, g: Any, epsilon: float) -> Any:
    """``P_ij = a_i pi_ij``: rows exact, columns as accurate as the solver's error.

    Equal to :func:`softk.sinkhorn.plan_from_potentials` with ``f`` eliminated,
    but without its rounding (``(f + g - C) / eps`` in float32 at small ``eps``).
    """
    z = log_b[..., None, :] + (g[..., None, :] - cost) / epsilon
    return xp.exp(log_a[..., :, None] + z - logsumexp(xp, z, keepdims=True))


def semidual_newton(
    xp: Any,
    cost: Any,
    log_a: Any,
    log_b: Any,
    epsilon: float,
    *,
    tol: float | None = None,
    max_iter: int = 200,
    eps_start: float = 1.0,
    shrink: float = 0.25,
) -> SinkhornResult:
    """Newton's method on the semi-dual of entropic OT with cost ``(..., n, m)``.

    ``log_a`` (..., n) and ``log_b`` (..., m) are log weights summing to one.
    Stops when the relative column-marginal error ``max_j |(P^T 1)_j / b_j - 1|
    <= tol`` at ``epsilon`` for every batch entry (default 1e-5 in float32,
    1e-12 in float64; raised to ``4 ulp max|C| / epsilon``, the rounding floor
    of ``(g_j - C_ij) / epsilon``), or after ``max_iter`` Newton steps
    (``converged`` is then False); ``error`` is that relative error, worst over
    the batch. ``eps_start`` should be of the order of the cost's range;
    stages below ``epsilon`` are skipped.

    Examples
    --------
    >>> import numpy as np
    >>> from softk.sinkhorn import plan_from_potentials
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    >>> la, lb = np.log(np.full(3, 1 / 3)), np.log(np.array([0.5, 0.5]))
    >>> r = semidual_newton(np, C, la, lb, 1e-3)
    >>> P = plan_from_potentials(np, C, la, lb, r.f, r.g, 1e-3)
    >>> bool(r.converged), bool(np.abs(P.sum(0) - 0.5).max() < 1e-14)
    (True, True)
    """
    dtype, dev = cost.dtype, device(cost)
    if tol is None:
        tol = 1e-5 if xp.finfo(dtype).bits <= 32 else 1e-12
    ulp = float(xp.finfo(dtype).eps)
    slack = 16.0 * ulp
    # rounding (g_j - C_ij) / eps bounds the reachable relative error by ~ ulp * |C| / eps
    tol = xp.maximum(xp.max(xp.abs(cost)) * (4.0 * ulp / epsilon), xp.asarray(tol, dtype=dtype, device=dev))
    a, b = xp.exp(log_a), xp.exp(log_b)
    m = cost.shape[-1]
    eye = xp.eye(m - 1, dtype=dtype, device=dev)

    def scores(g: Any, eps: Any) -> Any:  # eps: (..., 1, 1)
        return log_b[..., None, :] + (g[..., None, :] - cost) / eps

    def objective(g: Any, eps: Any) -> Any:
        return xp.sum(g * b, axis=-1) - eps[..., 0, 0] * xp.sum(a * logsumexp(xp, scores(g, eps)), axis=-1)

    def step(g: Any, eps_cur: Any, done: Any) -> Any:
        """The damped Newton step from ``g`` at ``eps_cur``, after a backtracking line search."""
        eps = eps_cur[..., None, None]
        z = scores(g, eps)
        lse = logsumexp(xp, z, keepdims=True)
        api = a[..., :, None] * xp.exp(z - lse)  # a_i pi_ij
        col = xp.sum(api, axis=-2)
        grad = b - col
        pi_t = xp.matrix_transpose(api / a[..., :, None])
        hess = (eye * col[..., None, : m - 1] - (pi_t @ api)[..., : m - 1, : m - 1]) / eps  # -Hess F
        damping = (DAMPING * xp.sum(xp.abs(grad), axis=-1) + slack) * xp.mean(col, axis=-1) / eps_cur
        hess = hess + damping[..., None, None] * eye
        d_head = xp.squeeze(xp.linalg.solve(hess, grad[..., : m - 1, None]), axis=-1)
        d = xp.concat([d_head, xp.zeros_like(d_head[..., :1])], axis=-1)
        d = xp.where(done[..., None], xp.zeros_like(d), d)
        slope = xp.sum(grad * d, axis=-1)
        f0 = xp.sum(g * b, axis=-1) - eps_cur * xp.sum(a * lse[..., 0], axis=-1)  # F(g), from the same pass
        floor = f0 - slack * (xp.abs(f0) + 1.0)

        def cond(state: tuple) -> Any:
            j, _, ok = state
            return xp.logical_and(j < MAX_HALVINGS, xp.logical_not(xp.all(ok)))

        def body(state: tuple) -> tuple:
            j, t, ok = state
            good = objective(g + t[..., None] * d, eps) >= floor + 1e-4 * t * slope
            ok = xp.logical_or(ok, good)
            return j + 1, xp.where(ok, t, 0.5 * t), ok

        ones = xp.ones(done.shape, dtype=dtype, device=dev)
        _, t, ok = while_loop(xp, cond, body, (xp.asarray(0, device=dev), ones, done))
        return g + xp.where(ok, t, xp.zeros_like(t))[..., None] * d

    def column_error(g: Any, eps_cur: Any) -> Any:
        z = scores(g, eps_cur[..., None, None])
        col = xp.sum(a[..., :, None] * xp.exp(z - logsumexp(xp, z, keepdims=True)), axis=-2)
        return xp.max(xp.abs(col / b - 1.0), axis=-1)

    final = epsilon * (1.0 + 1e-6)  # eps_cur holds epsilon rounded to dtype at the last stage

    def is_done(eps_cur: Any, err: Any) -> Any:
        return xp.logical_and(eps_cur <= final, err <= tol)

    def cond(state: tuple) -> Any:
        it, _, eps_cur, err = state
        return xp.logical_and(it < max_iter, xp.logical_not(xp.all(is_done(eps_cur, err))))

    def body(state: tuple) -> tuple:
        it, g, eps_cur, err = state
        g = step(g, eps_cur, is_done(eps_cur, err))
        err = column_error(g, eps_cur)
        # leave an intermediate stage once its marginals are roughly right
        next_eps = xp.where(err <= STAGE_TOL, xp.maximum(eps_cur * shrink, xp.full_like(eps_cur, epsilon)), eps_cur)
        stay = eps_cur <= final
        return it + 1, g, xp.where(stay, eps_cur, next_eps), xp.where(stay, err, xp.full_like(err, float("inf")))

    batch = cost.shape[:-2]
    g0 = xp.zeros(log_b.shape, dtype=dtype, device=dev)
    eps0 = xp.full(batch, max(epsilon, eps_start), dtype=dtype, device=dev)
    err0 = xp.full(batch, float("inf"), dtype=dtype, device=dev)
    it, g, eps_cur, err = while_loop(xp, cond, body, (xp.asarray(0, device=dev), g0, eps0, err0))
    f = -epsilon * logsumexp(xp, log_b[..., None, :] + (g[..., None, :] - cost) / epsilon)
    worst = xp.max(xp.reshape(err, (-1,)))
    return SinkhornResult(f, g, worst, it, xp.all(is_done(eps_cur, err)))
