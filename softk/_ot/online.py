"""Online Sinkhorn for point clouds: ``P`` is never formed.

The plan is produced in row blocks (:class:`softk._ot.blocks.PlanBlocks`, O(n + m)
memory plus one block). One pass over the blocks is one full Sinkhorn
iteration (:func:`solve`). Each block is the plan at the current ``(f, g)``;
its row sums ``r`` give the row-marginal error (free, every iteration) and the
f-update ``f += eps log(a / r)``; the column sums of the updated rows are
``(a / r)^T P``, so the g-update needs no second exponential pass. Entries
never overflow (after a g-update ``P_ij <= b_j``); a block whose row sums leave
half the dtype's exponent range is redone max-shifted, and a g-update whose
column sums would underflow falls back to a log-domain pass. Epsilon scaling
(stages ``eps 2^k`` from the clouds' squared bounding-box diameter, each
ended at ``STAGE_TOL``) and over-relaxation (``OMEGA``, halved when the error
grows) as in :mod:`softk._ot.kernel` (one rule: :mod:`softk._ot.schedule`); the g-update closing each block of
``check_every`` iterations is plain, and convergence is only declared on an
error measured with exact columns. Under ``jax.jit`` the same problem runs in
the bounded log-domain loop :func:`softk._ot.dense.log_domain`.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._dispatch import values_known
from .._xp import matvec_t, normal_exponent
from .blocks import PlanBlocks, accumulate, centred, concat_parts, rows_per_block
from .dense import SinkhornResult, log_domain
from .plan import clipped_exp
from .schedule import OMEGA, STAGE_TOL, WARMUP, epsilon_schedule, relaxation

__all__ = ["solve", "lse_update"]



def lse_update(xp: Any, x: Any, y: Any, h: Any, log_w: Any, eps: Any) -> Any:
    """``-eps LSE_j(log_w_j + (h_j - ||x_i - y_j||^2) / eps)`` for every ``i``, in row blocks of ``x``
    (max-shifted: the log-domain half-iteration, used under ``jax.jit`` and as a fallback)."""
    n, rows = x.shape[-2], rows_per_block(y.shape[-2])
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
    return concat_parts(xp, out, -1)


def solve(xp, x, y, log_a, log_b, epsilon, *, tol, max_iter, check_every, init=None, scaling=True):
    """Entropic OT potentials between clouds ``x`` (..., n, d) and ``y`` (..., m, d).

    Same contract as :func:`softk._ot.kernel.solve` (``n_iter`` counts full
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

    def block(f: Any, g: Any, eps: Any, steps: int, omega: Any) -> tuple:
        for step in range(steps):  # over-relaxed in the log domain, the last g-update plain
            f = f + omega * (f_update(g, eps) - f)
            g = g_update(f, eps) if step == steps - 1 else g + omega * (g_update(f, eps) - g)
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
            err = accumulate(err, xp.sum(xp.abs(rows - self.a[..., start:stop]), axis=-1))
            f_new.append(f[..., start:stop] + (omega * eps) * log_ratio)
            cols = accumulate(cols, matvec_t(xp, e, scale))
        f_new = concat_parts(xp, f_new, -1)
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
        schedule = [epsilon] if spread is None else epsilon_schedule(epsilon, spread)
        it, err, exact, done, eps = 0, math.inf, False, False, epsilon
        for k, eps in enumerate(schedule):
            last = k == len(schedule) - 1
            target = tol if last else max(tol, STAGE_TOL)
            omega, cap, started, official, official_it, step, exact, plain_errors = 1.0, OMEGA, False, math.inf, 0, 0, False, []
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
                            omega, cap = relaxation(1.0, cap, plain_errors[0], err, WARMUP - 1)
                            started = True
                    else:  # grows only with the error's rate; halved towards 1 (and capped) when the error grows
                        omega, cap = relaxation(omega, cap, official, err, it - official_it)
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
