"""The dense log-domain strategy: batched Sinkhorn on a formed cost, and the bounded loop every traced solve runs.

Problem (docs/maths.md section 1), for each leading batch index::

    min_P <P, C> + eps * sum_ij P_ij (log P_ij - log a_i b_j),  P 1 = a, P^T 1 = b,

solved by alternating ``f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps)`` and
``g_j = -eps LSE_i(log a_i + (f_i - C_ij) / eps)``; the plan is
``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``. After each g-update the column
marginals are exact; every ``check_every`` iterations the row-marginal error
``||P 1 - a||_1`` is measured, and the loop stops when it is ``<= tol`` for
every batch entry or after ``max_iter`` iterations (``converged`` says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from .._dispatch import while_loop
from .._xp import logsumexp
from .plan import balanced
from .schedule import OMEGA, STAGE_TOL, relaxation

__all__ = ["SinkhornResult", "sinkhorn_log", "sinkhorn_block", "log_domain"]


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
    may also be a 0-d array (the epsilon-scaling stages of :mod:`softk._ot.kernel`).

    Examples
    --------
    >>> import numpy as np
    >>> from softk._ot.plan import plan_from_potentials
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
    it, f, g, err = while_loop(xp, cond, body, (xp.asarray(0, device=dev), f0, g0, inf), traceable=True)
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


def log_domain(xp, block, g_update, f, g, spread, epsilon, *, tol, max_iter, check_every, relaxed=True) -> SinkhornResult:
    """One loop (``while_loop``: compiled under JAX) of log-domain blocks with epsilon scaling.

    ``block(f, g, eps, steps, omega) -> (f, g, error)`` runs ``steps`` iterations
    over-relaxed by ``omega`` (a 0-d array; its last g-update plain, so the error is
    measured with exact columns); ``g_update(f, eps)`` is one g-update. Epsilon
    starts at ``spread`` (a 0-d array; ``None``: no scaling) and halves whenever a
    stage reaches ``STAGE_TOL``; ``error`` counts only at ``epsilon``. Each stage
    starts plain (``omega = 1``); the factor then follows the eager strategies'
    rule (:func:`softk._ot.schedule.relaxation`) from consecutive blocks' errors;
    ``relaxed=False`` keeps it at 1 (a block that does not over-relax). The loop
    runs whole blocks, so ``n_iter`` never passes ``max_iter``.
    """
    dev, dtype = device(f), f.dtype
    eps0 = xp.asarray(epsilon, dtype=dtype, device=dev)
    eps0 = eps0 if spread is None else xp.maximum(spread, eps0)
    stage_tol = max(tol, STAGE_TOL)
    steps = min(check_every, max_iter)

    def cond(state: tuple) -> Any:
        it, eps, _, _, err = state[:5]
        return xp.logical_and(it + steps <= max_iter, xp.logical_or(eps > epsilon, err > tol))

    def body(state: tuple) -> tuple:
        it, eps, f, g, _, omega, cap, previous = state
        f, g, err = block(f, g, eps, steps, omega)
        f, g = balanced(xp, f, g)  # the gauge: keep both potentials near zero
        # a loose stage ends at STAGE_TOL; the next one starts at half the epsilon (at most 2 x epsilon above it)
        done = xp.logical_and(eps > epsilon, err <= stage_tol)
        # (constants made from the carried arrays: PyTorch's loop refuses a closure's array in its state)
        inf = xp.full_like(err, math.inf)
        if relaxed:  # a new stage starts plain
            omega, cap = relaxation(omega, cap, previous, err, steps, xp)
            omega, cap = xp.where(done, xp.ones_like(omega), omega), xp.where(done, xp.full_like(cap, OMEGA), cap)
        previous = xp.where(done, inf, err)
        halved = xp.where(eps > 2.0 * epsilon, 0.5 * eps, xp.full_like(eps, epsilon))
        err = xp.where(eps > epsilon, inf, err)  # not yet at epsilon
        return it + steps, xp.where(done, halved, eps), f, g, err, omega, cap, previous

    def scalar(value: float) -> Any:
        return xp.asarray(value, dtype=dtype, device=dev)

    start = (xp.asarray(0, device=dev), eps0, f, g, scalar(math.inf), scalar(1.0), scalar(OMEGA), scalar(math.inf))
    it, eps, f, g, err, *_ = while_loop(xp, cond, body, start, traceable=True)
    # stopped in an earlier stage: one g-update at epsilon makes the columns exact (and the plan finite)
    g = xp.where(eps > epsilon, g_update(f, epsilon), g)
    return SinkhornResult(f, g, err, it, err <= tol)
