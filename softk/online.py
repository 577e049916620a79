"""Online Sinkhorn and blockwise plan products: ``P`` is never formed.

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

**Solver** (:func:`solve`, point clouds): one pass over the blocks is one full
Sinkhorn iteration. Each block is the plan at the current ``(f, g)``; its row
sums ``r`` give the row-marginal error (free, every iteration) and the
f-update ``f += eps log(a / r)``; the column sums of the updated rows are
``(a / r)^T P``, so the g-update needs no second exponential pass. Entries
never overflow (after a g-update ``P_ij <= b_j``); a block whose row sums leave
half the dtype's exponent range is redone max-shifted, and a g-update whose
column sums would underflow falls back to a log-domain pass. Epsilon scaling
(stages ``eps 2^k`` from the clouds' squared bounding-box diameter, each
ended at ``STAGE_TOL``) and over-relaxation (``OMEGA``, halved when the error
grows) as in :mod:`softk.scaling`; the g-update closing each block of
``check_every`` iterations is plain, and convergence is only declared on an
error measured with exact columns. Under ``jax.jit`` the same problem runs in
the bounded log-domain loop :func:`softk.scaling.log_domain`.

**Products.** :func:`apply` gives ``P V``; :func:`apply_vjp` its VJP: ``P^T G``
for ``V`` and, for the problem, the implicit VJP of the plan contracted with
the rank-k cotangent ``G V^T`` (methods.md section 1) with matvecs only: one
pass for the right-hand side, the Schur complement accumulated blockwise (at
most ``SCHUR_MAX`` targets) or conjugate gradients with one pass per step, and
one last pass for the gradients.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from ._dispatch import values_known
from ._xp import matvec, matvec_t, normal_exponent
from .scaling import OMEGA, STAGE_TOL, log_domain
from .sinkhorn import SinkhornResult, diagonal_cg, gauged_solve

__all__ = ["solve", "value_vjp", "apply", "apply_vjp", "PlanBlocks", "BLOCK_ENTRIES", "SCHUR_MAX"]

BLOCK_ENTRIES = 2**19  # plan entries per block (4 MB in float64: cache-sized)
SCHUR_MAX = 128  # up to this many targets the implicit system is solved directly
WARMUP = 4  # plain iterations (errors with exact columns) per stage before over-relaxing


def _rows(m: int) -> int:
    return max(1, BLOCK_ENTRIES // max(m, 1))


def _spans(n: int, m: int) -> list[tuple[int, int]]:
    rows = _rows(m)
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


def clipped_exp(xp: Any, z: Any) -> Any:
    """``exp(z)`` with ``z`` clipped below at ``-(normal exponent - 8)`` (-79 in float32, -700 in float64).

    Underflowing exponentials are 10-20x slower than normal ones in PyTorch (and
    NumPy float64); in a plan at small epsilon most entries underflow. The clipped
    entries (< 4e-35 in float32) change a sum of ``m`` of them by less than
    ``m`` times that: far below the dtype's resolution of any row or column sum."""
    return xp.exp(xp.clip(z, min=8.0 - normal_exponent(xp, z.dtype)))


def _add(total: Any, part: Any) -> Any:
    return part if total is None else total + part


def _cat(xp: Any, parts: list, axis: int) -> Any:
    return xp.concat(parts, axis=axis) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- the solver


def lse_update(xp: Any, x: Any, y: Any, h: Any, log_w: Any, eps: Any) -> Any:
    """``-eps LSE_j(log_w_j + (h_j - ||x_i - y_j||^2) / eps)`` for every ``i``, in row blocks of ``x``
    (max-shifted: the log-domain half-iteration, used under ``jax.jit`` and as a fallback)."""
    n, rows = x.shape[-2], _rows(y.shape[-2])
    col = log_w + (h - xp.sum(y * y, axis=-1)) / eps
    y_t = xp.matrix_transpose(y) * (2.0 / eps)
    out = []
    for start in range(0, n, rows):
        xb = x[..., start : min(start + rows, n), :]
        z = xb @ y_t
        z = z + col[..., None, :]
        top = xp.max(z, axis=-1, keepdims=True)
        top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
        lse = xp.log(xp.sum(clipped_exp(xp, z - top), axis=-1)) + top[..., 0]
        out.append(xp.sum(xb * xb, axis=-1) - eps * lse)
    return _cat(xp, out, -1)


def solve(xp, x, y, log_a, log_b, epsilon, *, tol, max_iter, check_every, init=None, scaling=True):
    """Entropic OT potentials between clouds ``x`` (..., n, d) and ``y`` (..., m, d).

    Same contract as :func:`softk.scaling.solve` (``n_iter`` counts full
    iterations over all stages, ``converged`` only at ``epsilon``).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0]]); w = np.log(np.array([0.5, 0.5]))
    >>> r = solve(np, x, x, w, w, 1e-2, tol=1e-9, max_iter=1000, check_every=10)
    >>> bool(r.converged), np.round(r.f + r.g, 4).tolist()   # f_i + g_i ~ eps log 2 on the diagonal
    (True, [0.0069, 0.0069])
    """
    x, y = centred(xp, x, y)
    if init is None:
        f, g = xp.zeros_like(log_a), xp.zeros_like(log_b)
    else:
        f, g = init
    spread = None
    if scaling and init is None:
        low = xp.minimum(xp.min(x, axis=-2), xp.min(y, axis=-2))
        high = xp.maximum(xp.max(x, axis=-2), xp.max(y, axis=-2))
        spread = xp.max(xp.sum((high - low) ** 2, axis=-1))
    if values_known(xp, x):
        spread = None if spread is None else float(spread)
        return _Online(xp, x, y, log_a, log_b).run(f, g, spread, epsilon, tol, max_iter, check_every)
    a = xp.exp(log_a)

    def f_update(g: Any, eps: Any) -> Any:
        return lse_update(xp, x, y, g, log_b, eps)

    def g_update(f: Any, eps: Any) -> Any:
        return lse_update(xp, y, x, f, log_a, eps)

    def block(f: Any, g: Any, eps: Any, steps: int) -> tuple:
        for _ in range(steps):
            f = f_update(g, eps)
            g = g_update(f, eps)
        rows = a * xp.exp((f - f_update(g, eps)) / eps)
        return f, g, xp.max(xp.sum(xp.abs(rows - a), axis=-1))

    return log_domain(xp, block, g_update, f, g, spread, epsilon, tol=tol, max_iter=max_iter, check_every=check_every)


class _Online:
    """The eager online solver (see the module docstring)."""

    def __init__(self, xp: Any, x: Any, y: Any, log_a: Any, log_b: Any):
        self.xp, self.x, self.y, self.log_a, self.log_b = xp, x, y, log_a, log_b
        self.a = xp.exp(log_a)
        self.limit = 0.5 * normal_exponent(xp, log_a.dtype)

    def sweep(self, f: Any, g: Any, eps: float, omega: float, plain_g: bool) -> tuple[float, Any, Any]:
        """One iteration: ``(row error at (f, g), f', g')``, f- and g-updates relaxed by ``omega``
        (the g-update plain if ``plain_g``)."""
        xp, log_a = self.xp, self.log_a
        plan = PlanBlocks(xp, log_a, self.log_b, f, g, eps, x=self.x, y=self.y)
        err, f_new, cols = None, [], None
        for start, stop in plan.spans():
            z = plan.log_block(start, stop)
            e = clipped_exp(xp, z)
            rows = xp.sum(e, axis=-1)
            log_ratio = log_a[..., start:stop] - xp.log(rows)
            if bool(xp.all(xp.abs(log_ratio) < self.limit)):
                scale = xp.exp(omega * log_ratio) if omega != 1.0 else self.a[..., start:stop] / rows
            else:  # rows out of range: max-shifted (exact where the plain sum under/overflows)
                top = xp.max(z, axis=-1)
                top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
                e = clipped_exp(xp, z - top[..., None])
                rows_shifted = xp.sum(e, axis=-1)
                log_ratio = log_a[..., start:stop] - xp.log(rows_shifted) - top
                rows = xp.exp(xp.log(rows_shifted) + top)
                scale = xp.exp(omega * log_ratio + top)
            del z
            err = _add(err, xp.sum(xp.abs(rows - self.a[..., start:stop]), axis=-1))
            f_new.append(f[..., start:stop] + (omega * eps) * log_ratio)
            cols = _add(cols, matvec_t(xp, e, scale))
        f_new = _cat(xp, f_new, -1)
        step = 1.0 if plain_g else omega
        log_ratio = self.log_b - xp.log(cols)
        if bool(xp.all(xp.abs(log_ratio) < self.limit)):
            g_new = g + (step * eps) * log_ratio
        else:  # columns out of range: a max-shifted log-domain g-update
            g_exact = lse_update(xp, self.y, self.x, f_new, log_a, eps)
            g_new = g + step * (g_exact - g)
        return float(xp.max(err)), f_new, g_new

    def measure(self, f: Any, g: Any, eps: float) -> float:
        """Row-marginal error at ``(f, g)`` (max-shifted row sums)."""
        xp = self.xp
        rows = xp.exp(self.log_a - (lse_update(xp, self.x, self.y, g, self.log_b, eps) - f) / eps)
        return float(xp.max(xp.sum(xp.abs(rows - self.a), axis=-1)))

    def run(self, f, g, spread, epsilon, tol, max_iter, check_every) -> SinkhornResult:
        xp = self.xp
        schedule = [epsilon]
        if spread is not None and spread > epsilon:
            schedule = [epsilon * 2.0**k for k in range(min(int(math.log2(spread / epsilon)), 200), -1, -1)]
        it, err, exact, done, eps = 0, math.inf, False, False, epsilon
        for k, eps in enumerate(schedule):
            last = k == len(schedule) - 1
            target = tol if last else max(tol, STAGE_TOL)
            omega, started, capped, official, official_it, step, exact, plain_errors = 1.0, False, False, math.inf, 0, 0, False, []
            while it < max_iter:
                # plain g-updates close each block of check_every iterations, the last iteration
                # allowed and any iteration after an error below target: the next error is then
                # measured with exact columns (the only kind that ends the last stage)
                step += 1
                plain = omega == 1.0 or step % check_every == 0 or it + 2 >= max_iter or err <= target
                err, f_new, g_new = self.sweep(f, g, eps, omega, plain)
                it += 1
                if err <= target and (exact or not last):
                    done = last  # then (f, g) are the potentials the error was measured at
                    if not last:
                        f, g, exact = f_new, g_new, False
                    break
                if exact:  # an error with exact columns: adapt the over-relaxation
                    if not started:
                        plain_errors.append(err)
                        if len(plain_errors) == WARMUP:
                            omega, started = _omega(1.0, plain_errors[0], err, WARMUP - 1), True
                    elif err > official:  # growing: halve the over-relaxation towards 1
                        omega, capped = 1.0 + 0.5 * (omega - 1.0), True
                    elif not capped:
                        omega = max(omega, _omega(omega, official, err, it - official_it))
                    official, official_it = err, it
                f, g, exact = f_new, g_new, plain
            if done or it >= max_iter:
                break
        if not done:
            if not (exact and eps == epsilon):
                # stopped early: a plain log-domain g-update at epsilon makes the columns exact
                g = lse_update(xp, self.y, self.x, f, self.log_a, epsilon)
            err = self.measure(f, g, epsilon)
        dev, dtype = device(f), f.dtype
        error = xp.asarray(err, dtype=dtype, device=dev)
        return SinkhornResult(f, g, error, xp.asarray(it, device=dev), error <= tol)


def _omega(omega: float, before: float, after: float, steps: int) -> float:
    """Over-relaxation factor from two errors (exact columns) ``steps`` iterations apart at ``omega``.

    The observed rate ``rho = (after / before)^(1 / steps)`` estimates, for a
    linear iteration, the contraction ``kappa`` of plain Sinkhorn through
    ``(rho + omega - 1)^2 = omega^2 kappa rho`` (Young's relation for
    successive over-relaxation); the optimal factor is then
    ``2 / (1 + sqrt(1 - kappa))`` (Lehmann, von Renesse, Sambale and
    Uschmajew 2021, "A note on overrelaxation in the Sinkhorn algorithm"),
    capped at ``OMEGA``. Early errors fall fastest, so this tends to
    underestimate ``kappa``: it is re-estimated at every error with exact columns."""
    if not (math.isfinite(before) and math.isfinite(after)) or after <= 0.0 or after >= before or steps < 1:
        return 1.0
    rho = (after / before) ** (1.0 / steps)
    kappa = min(1.0, (rho + omega - 1.0) ** 2 / (omega * omega * rho))
    return min(OMEGA, 2.0 / (1.0 + math.sqrt(1.0 - kappa)))


# --------------------------------------------------------------------------- products without P


def plan_products(xp: Any, plan: PlanBlocks, right: Any, left: Any) -> tuple[Any, Any]:
    """``(P right, P^T left)`` in one pass; ``right`` (..., m, k), ``left`` (..., n, l)."""
    p_r, pt_l = [], None
    for start, stop in plan.spans():
        e = plan.block(start, stop)
        p_r.append(e @ right)
        pt_l = _add(pt_l, xp.matrix_transpose(e) @ left[..., start:stop, :])
    return _cat(xp, p_r, -2), pt_l


def apply(xp: Any, plan: PlanBlocks, v: Any) -> Any:
    """``P v`` for ``v`` (..., m, k), one block at a time."""
    return _cat(xp, [plan.block(start, stop) @ v for start, stop in plan.spans()], -2)


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
    normalised weights, as :func:`softk.sinkhorn.plan_vjp` returns them.

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
        b = _add(b, xp.sum(e, axis=-2))
        pt_cot = _add(pt_cot, xp.matrix_transpose(e) @ cot[..., start:stop, :])
        pt_alpha = _add(pt_alpha, matvec_t(xp, e, alpha_b / a_b))
        if schur:
            s = _add(s, xp.matrix_transpose(e) @ (e / a_b[..., None]))
    a, alpha = _cat(xp, a, -1), _cat(xp, alpha, -1)
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
        grad_y = _add(grad_y, 2.0 * (y * xp.sum(grad, axis=-2)[..., None] - xp.matrix_transpose(grad) @ xb))
    geometry = _cat(xp, grad_c, -2) if x is None else (_cat(xp, grad_x, -2), grad_y)
    return geometry, _cat(xp, u, -1), w, pt_cot


def _cg(xp: Any, plan: PlanBlocks, a: Any, b: Any, rhs: Any, tol: float, max_iter: int) -> Any:
    """Preconditioned CG for ``(diag(b) - P^T diag(1/a) P) w = rhs``, one blockwise pass per step."""

    def schur(w: Any) -> Any:
        out = b * w
        for start, stop in plan.spans():
            e = plan.block(start, stop)
            out = out - matvec_t(xp, e, matvec(xp, e, w) / a[..., start:stop])
        return out

    return diagonal_cg(xp, schur, b, rhs, tol, max_iter)
