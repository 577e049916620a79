"""The symmetric strategy: the self-transport ``OT(x, x)`` of the Sinkhorn divergence.

With the same measure on both sides the optimal potentials are equal,
``f = g``, and the fixed point ``f = T(f)``,
``T(f)_i = -eps LSE_j(log a_j + (f_j - C_ij) / eps)``, is reached fastest by
the averaged update ``f <- (f + T(f)) / 2`` (Feydy et al. 2019): plain
alternating Sinkhorn oscillates on a concentrated cloud (1,220 iterations
where the average needs a few dozen). Two loops, with the epsilon schedule
and stopping rule every strategy shares (:mod:`softk._ot.schedule`):

* eager, on a formed cost: kernel form. With ``K_ij = a_j exp((f_i + f_j - C_ij) / eps)``
  built at the current ``f`` and ``u = exp((f' - f) / eps)``, the average is
  ``u <- sqrt(u / (K u))``: one matrix-vector product per iteration; ``u`` is
  absorbed into ``f`` (and ``K`` rebuilt) when ``|log u|`` leaves a quarter of
  the dtype's exponent range; halving epsilon squares the kernel
  (``K <- K^2 / a_j``), which is rebuilt exactly only for the last stage;
* traced (``jax.jit``): the same kernel form in :func:`softk._ot.dense.log_domain`'s
  bounded loop, absorbed at the end of every block of ``check_every`` iterations;
* online: the log-domain average, one log-sum-exp pass per iteration in row
  blocks of the cloud (:func:`softk._ot.online.lse_update`, O(n) memory).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._dispatch import values_known
from .._xp import logsumexp, matvec, normal_exponent
from .dense import SinkhornResult, log_domain
from .online import lse_update
from .plan import clipped_exp
from .schedule import STAGE_TOL, epsilon_schedule

__all__ = ["symmetric_solve"]


def symmetric_solve(
    xp: Any, log_a: Any, epsilon: float, *, cost: Any = None, x: Any = None, tol: float, max_iter: int, check_every: int, scaling: bool
) -> SinkhornResult:
    """Potential ``f`` of ``OT(a, a)`` for ``cost`` (..., n, n) or the cloud ``x`` (..., n, d); ``g`` is ``f``.

    ``error`` is the row-marginal L1 error of the plan at ``(f, f)`` (its
    columns then have the same error: the plan is symmetric).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0]]); w = np.log(np.array([0.5, 0.5]))
    >>> r = symmetric_solve(np, w, 0.01, x=x, tol=1e-9, max_iter=1000, check_every=5, scaling=True)
    >>> bool(r.converged), np.round(2 * r.f, 4).tolist()   # f_i + f_i ~ eps log 2 on the diagonal
    (True, [0.0069, 0.0069])
    """
    a = xp.exp(log_a)

    def transform(f: Any, eps: Any) -> Any:
        if cost is None:
            return lse_update(xp, x, x, f, log_a, eps)
        return -eps * logsumexp(xp, log_a[..., None, :] + (f[..., None, :] - cost) / eps, axis=-1)

    def average(f: Any, eps: Any) -> Any:
        return 0.5 * (f + transform(f, eps))

    def block(f: Any, g: Any, eps: Any, steps: int, omega: Any) -> tuple:  # omega = 1: relaxed=False
        if cost is not None:  # kernel form, absorbed at the end of every block
            kern, u = _build(xp, cost, log_a, f, eps), xp.ones_like(f)
            for _ in range(steps):
                u = xp.sqrt(u / matvec(xp, kern, u))
            err = xp.max(xp.sum(xp.abs(a * u * matvec(xp, kern, u) - a), axis=-1))
            f_new = f + eps * xp.log(u)
            ok = xp.logical_and(xp.all(xp.isfinite(f_new)), xp.isfinite(err))
            f = xp.where(ok, f_new, f)
            return f, f, xp.where(ok, err, xp.full_like(err, math.inf))
        for _ in range(steps):
            f = average(f, eps)
        rows = a * xp.exp((f - transform(f, eps)) / eps)
        return f, f, xp.max(xp.sum(xp.abs(rows - a), axis=-1))

    spread = None
    if scaling:
        if cost is None:
            spread = xp.max(xp.sum((xp.max(x, axis=-2) - xp.min(x, axis=-2)) ** 2, axis=-1))
        else:
            spread = xp.max(cost) - xp.min(cost)
    f0 = xp.zeros_like(log_a)
    if cost is not None and values_known(xp, cost):
        schedule = [epsilon] if spread is None else epsilon_schedule(epsilon, float(spread))
        return _kernel(xp, cost, log_a, schedule, tol, max_iter, check_every)
    return log_domain(xp, block, average, f0, f0, spread, epsilon, tol=tol, max_iter=max_iter, check_every=check_every, relaxed=False)


def _kernel(xp: Any, cost: Any, log_a: Any, schedule: list[float], tol: float, max_iter: int, check_every: int) -> SinkhornResult:
    """The eager kernel-form loop (see the module docstring)."""
    a = xp.exp(log_a)
    limit = 0.25 * normal_exponent(xp, cost.dtype)
    f, it, err = xp.zeros_like(log_a), 0, math.inf

    kern = None
    for k, eps in enumerate(schedule):
        last = k == len(schedule) - 1
        target = tol if last else max(tol, STAGE_TOL)
        if kern is None or last:  # built exactly at the first and the last stage
            kern = _build(xp, cost, log_a, f, eps)
        else:  # halving epsilon at fixed f squares the kernel: K <- K^2 / a_j, no exponential
            kern *= kern
            kern /= a[..., None, :]
        u, step = xp.ones_like(f), 0
        while it < max_iter:
            s = matvec(xp, kern, u)
            if step % check_every == 0:
                err = float(xp.max(xp.sum(xp.abs(a * u * s - a), axis=-1)))
                if err <= target:
                    break
            u = xp.sqrt(u / s)
            it, step = it + 1, step + 1
            if float(xp.max(xp.abs(xp.log(u)))) > limit:  # absorb and rebuild
                f, u = f + eps * xp.log(u), xp.ones_like(u)
                kern = _build(xp, cost, log_a, f, eps)
        f = f + eps * xp.log(u)
        kern *= u[..., :, None]  # absorbed: the kernel at the new f
        kern *= u[..., None, :]
        if it >= max_iter:
            break
    error = xp.asarray(err, dtype=f.dtype, device=device(f))
    return SinkhornResult(f, f, error, xp.asarray(it, device=device(f)), error <= tol)


def _build(xp: Any, cost: Any, log_a: Any, f: Any, eps: Any) -> Any:
    """``K_ij = a_j exp((f_i + f_j - C_ij) / eps)``."""
    z = (f[..., :, None] + f[..., None, :] - cost) / eps
    return clipped_exp(xp, z + log_a[..., None, :])
