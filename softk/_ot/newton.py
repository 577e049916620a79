"""Few-target entropic OT: Newton's method on the semi-dual, batched over leading dims.

With ``m`` targets (a few dozen at most) the problem of docs/maths.md section 1
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
at tiny ``eps``. The result has the fields of :class:`softk._ot.dense.SinkhornResult`
(so :func:`softk._ot.plan.plan_from_potentials` and
:func:`softk._ot.implicit.plan_vjp` apply unchanged).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._dispatch import while_loop
from .._xp import logsumexp
from .dense import SinkhornResult
from .plan import flushed_exp

__all__ = ["semidual_newton", "semidual_newton_plan", "semidual_newton_plan_t", "semidual_plan"]

MAX_HALVINGS = 40
NEWTON_STAGE_TOL = 0.1  # relative column-marginal error that ends an intermediate continuation stage
DAMPING = 0.01  # Levenberg damping: this times the marginal error, relative to the mean Hessian diagonal
SINKHORN_STARTS = 3  # Sinkhorn updates of g before Newton when warm-started (``init``)


def semidual_plan(xp: Any, cost: Any, log_a: Any, log_b: Any, g: Any, epsilon: float) -> Any:
    """``P_ij = a_i pi_ij``: rows exact, columns as accurate as the solver's error.

    Equal to :func:`softk._ot.plan.plan_from_potentials` with ``f`` eliminated,
    but without its rounding (``(f + g - C) / eps`` in float32 at small ``eps``).
    """
    z = log_b[..., None, :] + (g[..., None, :] - cost) / epsilon
    return flushed_exp(xp, log_a[..., :, None] + z - logsumexp(xp, z, keepdims=True))


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
    init: Any = None,
) -> SinkhornResult:
    """Newton's method on the semi-dual of entropic OT with cost ``(..., n, m)``.

    ``log_a`` (..., n) and ``log_b`` (..., m) are log weights summing to one.
    Stops when the relative column-marginal error ``max_j |(P^T 1)_j / b_j - 1|
    <= tol`` at ``epsilon`` for every batch entry (default 1e-5 in float32,
    1e-12 in float64; raised to ``4 ulp max|C| / epsilon``, the rounding floor
    of ``(g_j - C_ij) / epsilon``), or after ``max_iter`` Newton steps
    (``converged`` is then False); ``error`` is that relative error, worst over
    the batch. ``eps_start`` (a float, or an array of shape
    ``cost.shape[:-2]``) should be of the order of the cost's range; stages
    below ``epsilon`` are skipped. ``init`` (..., m): start from these
    target potentials directly at ``epsilon`` (no continuation), e.g. the
    unregularised potentials (:func:`softk.sorting.hard_potentials`).

    Examples
    --------
    >>> import numpy as np
    >>> from softk._ot.plan import plan_from_potentials
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    >>> la, lb = np.log(np.full(3, 1 / 3)), np.log(np.array([0.5, 0.5]))
    >>> r = semidual_newton(np, C, la, lb, 1e-3)
    >>> P = plan_from_potentials(np, C, la, lb, r.f, r.g, 1e-3)
    >>> bool(r.converged), bool(np.abs(P.sum(0) - 0.5).max() < 1e-14)
    (True, True)
    """
    return _newton(xp, xp.matrix_transpose(cost), log_a, log_b, epsilon, tol, max_iter, eps_start, shrink, init)[0]


def semidual_newton_plan(
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
    init: Any = None,
) -> tuple[SinkhornResult, Any]:
    """:func:`semidual_newton` and its plan (:func:`semidual_plan`), the latter
    from the solver's last pass when started from ``init``."""
    cost_t = xp.matrix_transpose(cost)
    result, plan_t = _newton(xp, cost_t, log_a, log_b, epsilon, tol, max_iter, eps_start, shrink, init)
    if plan_t is None:
        return result, semidual_plan(xp, cost, log_a, log_b, result.g, epsilon)
    return result, xp.matrix_transpose(plan_t)


def semidual_newton_plan_t(
    xp: Any,
    cost_t: Any,
    log_a: Any,
    log_b: Any,
    epsilon: float,
    *,
    tol: float | None = None,
    max_iter: int = 200,
    eps_start: float = 1.0,
    shrink: float = 0.25,
    init: Any = None,
) -> tuple[SinkhornResult, Any]:
    """:func:`semidual_newton_plan` in the transposed layout: ``cost_t`` is
    ``(..., m, n)`` and so is the returned plan (``P^T``). The solver works in
    this layout (its reductions run over the long axis ``n`` or across rows of
    it), so a caller that can build the cost this way saves the transposes."""
    result, plan_t = _newton(xp, cost_t, log_a, log_b, epsilon, tol, max_iter, eps_start, shrink, init)
    if plan_t is None:
        cost = xp.matrix_transpose(cost_t)
        plan_t = xp.matrix_transpose(semidual_plan(xp, cost, log_a, log_b, result.g, epsilon))
    return result, plan_t


def _newton(xp, cost, log_a, log_b, epsilon, tol, max_iter, eps_start, shrink, init) -> tuple[SinkhornResult, Any]:
    """The solver, on the transposed cost ``(..., m, n)``; with ``init`` it carries
    each pass's plan (transposed, ``(..., m, n)``) to the next step (one
    exponential per step), else it re-evaluates at the start of every step (the
    epsilon stage may have changed) and returns no plan."""
    dtype, dev = cost.dtype, device(cost)
    if tol is None:
        tol = 1e-5 if xp.finfo(dtype).bits <= 32 else 1e-12
    ulp = float(xp.finfo(dtype).eps)
    slack = 16.0 * ulp
    # rounding (g_j - C_ij) / eps bounds the reachable relative error by ~ ulp * |C| / eps
    tol = xp.maximum(xp.max(xp.abs(cost)) * (4.0 * ulp / epsilon), xp.asarray(tol, dtype=dtype, device=dev))
    a, b = xp.exp(log_a), xp.exp(log_b)
    m = cost.shape[-2]
    eye = xp.eye(m - 1, dtype=dtype, device=dev)
    carry = init is not None
    cost_eps = cost / epsilon if carry else None

    def evaluate(g: Any, eps_cur: Any) -> tuple[Any, Any, Any]:
        """One pass: ``F(g)``, the plan ``a_i pi_ij`` and ``lse_i`` (``f = -eps lse``)."""
        scaled = cost_eps if carry else cost / eps_cur[..., None, None]
        z = (log_b + g / eps_cur[..., None])[..., :, None] - scaled
        top = xp.max(z, axis=-2, keepdims=True)
        e = flushed_exp(xp, z - top)
        total = xp.sum(e, axis=-2, keepdims=True)
        lse = xp.log(total) + top
        objective = xp.sum(g * b, axis=-1) - eps_cur * xp.sum(a * lse[..., 0, :], axis=-1)
        return objective, e * (a[..., None, :] / total), lse[..., 0, :]

    def step(g: Any, eps_cur: Any, done: Any, current: tuple) -> tuple:
        """The damped Newton step from ``g`` at ``eps_cur``, after a backtracking line search."""
        f0, api, lse = current
        col = xp.sum(api, axis=-1)
        grad = b - col
        pi_t = api / a[..., None, :]
        outer = (pi_t @ xp.matrix_transpose(api))[..., : m - 1, : m - 1]
        hess = (eye * col[..., None, : m - 1] - outer) / eps_cur[..., None, None]  # -Hess F
        damping = (DAMPING * xp.sum(xp.abs(grad), axis=-1) + slack) * xp.mean(col, axis=-1) / eps_cur
        hess = hess + damping[..., None, None] * eye
        d_head = xp.squeeze(xp.linalg.solve(hess, grad[..., : m - 1, None]), axis=-1)
        d = xp.concat([d_head, xp.zeros_like(d_head[..., :1])], axis=-1)
        d = xp.where(done[..., None], xp.zeros_like(d), d)
        slope = xp.sum(grad * d, axis=-1)
        floor = f0 - slack * (xp.abs(f0) + 1.0)

        def accept(found: tuple, ok: Any, new: tuple) -> tuple:
            fresh = xp.logical_and(ok, xp.logical_not(found[0]))
            return (
                xp.logical_or(found[0], ok),
                xp.where(fresh, new[0], found[1]),
                xp.where(fresh[..., None, None], new[1], found[2]),
                xp.where(fresh[..., None], new[2], found[3]),
            )

        def cond(state: tuple) -> Any:
            j, _, found = state[0], state[1], state[2]
            return xp.logical_and(j < MAX_HALVINGS, xp.logical_not(xp.all(found[0])))

        def body(state: tuple) -> tuple:
            j, t, found = state
            t = xp.where(found[0], t, 0.5 * t)
            new = evaluate(g + t[..., None] * d, eps_cur)
            ok = new[0] >= floor + 1e-4 * t * slope
            return j + 1, t, accept(found, ok, new)

        t = xp.ones(done.shape, dtype=dtype, device=dev)
        new = evaluate(g + d, eps_cur)
        ok = xp.logical_or(done, new[0] >= floor + 1e-4 * slope)
        found = (ok, new[0], new[1], new[2])
        _, t, found = while_loop(xp, cond, body, (xp.asarray(1, device=dev), t, found))
        ok = found[0]
        t = xp.where(ok, t, xp.zeros_like(t))
        # no acceptable step: stay at g (and its pass)
        kept = accept(found, xp.ones_like(ok), current)[1:]
        return g + t[..., None] * d, kept

    final = epsilon * (1.0 + 1e-6)  # eps_cur holds epsilon rounded to dtype at the last stage

    def is_done(eps_cur: Any, err: Any) -> Any:
        return xp.logical_and(eps_cur <= final, err <= tol)

    def column_error(api: Any) -> Any:
        return xp.max(xp.abs(xp.sum(api, axis=-1) / b - 1.0), axis=-1)

    def cond(state: tuple) -> Any:
        it, _, eps_cur, err = state[:4]
        return xp.logical_and(it < max_iter, xp.logical_not(xp.all(is_done(eps_cur, err))))

    def body(state: tuple) -> tuple:
        it, g, eps_cur, err, current = state
        if not carry:
            current = evaluate(g, eps_cur)
        g, current = step(g, eps_cur, is_done(eps_cur, err), current)
        err = column_error(current[1])
        if carry:
            return it + 1, g, eps_cur, err, current
        # leave an intermediate stage once its marginals are roughly right
        next_eps = xp.where(err <= NEWTON_STAGE_TOL, xp.maximum(eps_cur * shrink, xp.full_like(eps_cur, epsilon)), eps_cur)
        stay = eps_cur <= final
        return it + 1, g, xp.where(stay, eps_cur, next_eps), xp.where(stay, err, xp.full_like(err, float("inf"))), current

    batch = cost.shape[:-2]
    eps0 = xp.full(batch, epsilon, dtype=dtype, device=dev)
    if not carry:
        eps0 = xp.maximum(eps0, xp.astype(xp.broadcast_to(xp.asarray(eps_start, device=dev), batch), dtype))
    if carry:
        g0 = xp.astype(xp.broadcast_to(init, log_b.shape), dtype)
        current = evaluate(g0, eps0)
        # a few Sinkhorn updates g_j += eps log(b_j / (P^T 1)_j) (each raises F: exact dual ascent
        # in g for the current f) bring e.g. unregularised potentials near the entropic ones
        tiny = float(xp.finfo(dtype).smallest_normal)
        for _ in range(SINKHORN_STARTS):
            col = xp.maximum(xp.sum(current[1], axis=-1), xp.asarray(tiny, dtype=dtype, device=dev))
            g0 = g0 + epsilon * (log_b - xp.log(col))
            current = evaluate(g0, eps0)
        err0 = column_error(current[1])
    else:
        g0 = xp.zeros(log_b.shape, dtype=dtype, device=dev)
        current = evaluate(g0, eps0)  # placeholder of the loop state's shapes
        err0 = xp.full(batch, float("inf"), dtype=dtype, device=dev)
    it, g, eps_cur, err, current = while_loop(xp, cond, body, (xp.asarray(0, device=dev), g0, eps0, err0, current))
    if carry:
        f, plan = -epsilon * current[2], current[1]
    else:
        f, plan = -epsilon * logsumexp(xp, log_b[..., :, None] + (g[..., :, None] - cost) / epsilon, axis=-2), None
    worst = xp.max(xp.reshape(err, (-1,)))
    return SinkhornResult(f, g, worst, it, xp.all(is_done(eps_cur, err))), plan
