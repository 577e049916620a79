"""Online Sinkhorn for point clouds: squared Euclidean cost blocks computed on the fly.

Memory O(n + m) (plus one block of ``BLOCK_ENTRIES`` cost entries) instead of
the O(n m) of a cost matrix. Each half-iteration is a blocked log-sum-exp,

    f_i = -eps LSE_j(log b_j + (g_j - ||x_i - y_j||^2) / eps),

over row blocks of ``x`` (and the symmetric g-update over row blocks of ``y``),
inside the same epsilon-scaled, bounded loop as the dense log-domain solver
(:func:`softk.scaling.log_domain`). Epsilon scaling starts from the squared
diameter of the clouds' bounding box (an upper bound on the cost's spread).

The value's gradient needs only ``P y`` and ``P^T x``, also computed blockwise:
``dW/dx = 2 (a * x - P y)``, ``dW/dy = 2 (b * y - P^T x)``.
"""

from __future__ import annotations

from typing import Any

from .costs import sqeuclidean
from .scaling import log_domain
from ._xp import logsumexp

__all__ = ["solve", "value_vjp", "BLOCK_ENTRIES"]

BLOCK_ENTRIES = 2**22  # cost entries per block (32 MB in float64)


def _rows(m: int) -> int:
    return max(1, BLOCK_ENTRIES // max(m, 1))


def lse_update(xp: Any, x: Any, y: Any, h: Any, log_w: Any, eps: Any) -> Any:
    """``-eps LSE_j(log_w_j + (h_j - ||x_i - y_j||^2) / eps)`` for every ``i``, in row blocks of ``x``.

    With ``||x_i - y_j||^2 = |x_i|^2 + |y_j|^2 - 2 x_i.y_j`` the row term leaves
    the log-sum-exp: per block one matrix product, one broadcast add and the
    max-shifted exponential sum.
    """
    n, rows = x.shape[-2], _rows(y.shape[-2])
    col = log_w + (h - xp.sum(y * y, axis=-1)) / eps
    y_t = xp.matrix_transpose(y) * (2.0 / eps)
    out = []
    for start in range(0, n, rows):
        xb = x[..., start : min(start + rows, n), :]
        z = xb @ y_t
        z += col[..., None, :]
        out.append(xp.sum(xb * xb, axis=-1) - eps * logsumexp(xp, z, axis=-1))
    return xp.concat(out, axis=-1) if len(out) > 1 else out[0]


def solve(xp, x, y, log_a, log_b, epsilon, *, tol, max_iter, check_every, init=None, scaling=True):
    """Entropic OT potentials between clouds ``x`` (..., n, d) and ``y`` (..., m, d).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0]]); w = np.log(np.array([0.5, 0.5]))
    >>> r = solve(np, x, x, w, w, 1e-2, tol=1e-9, max_iter=1000, check_every=10)
    >>> bool(r.converged), np.round(r.f + r.g, 4).tolist()   # f_i + g_i ~ eps log 2 on the diagonal
    (True, [0.0069, 0.0069])
    """
    a = xp.exp(log_a)
    if init is None:
        f, g = xp.zeros_like(log_a), xp.zeros_like(log_b)
    else:
        f, g = init

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

    spread = None
    if scaling and init is None:
        low = xp.minimum(xp.min(x, axis=-2), xp.min(y, axis=-2))
        high = xp.maximum(xp.max(x, axis=-2), xp.max(y, axis=-2))
        spread = xp.max(xp.sum((high - low) ** 2, axis=-1))
    return log_domain(xp, block, g_update, f, g, spread, epsilon, tol=tol, max_iter=max_iter, check_every=check_every)


def plan_products(xp, x, y, log_a, log_b, f, g, eps):
    """``(P 1, P y, P^T 1, P^T x)`` without forming ``P``: row blocks of ``x``."""
    n, rows = x.shape[-2], _rows(y.shape[-2])
    p_1, p_y, pt_1, pt_x = [], [], None, None
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        xb = x[..., start:stop, :]
        log_p = log_a[..., start:stop, None] + log_b[..., None, :]
        log_p = log_p + (f[..., start:stop, None] + g[..., None, :] - sqeuclidean(xp, xb, y)) / eps
        plan = xp.exp(log_p)
        p_1.append(xp.sum(plan, axis=-1))
        p_y.append(plan @ y)
        part, part_1 = xp.matrix_transpose(plan) @ xb, xp.sum(plan, axis=-2)
        pt_x = part if pt_x is None else pt_x + part
        pt_1 = part_1 if pt_1 is None else pt_1 + part_1
    return xp.concat(p_1, axis=-1), xp.concat(p_y, axis=-2), pt_1, pt_x


def value_vjp(xp, x, y, log_a, log_b, f, g, eps, cotangent):
    """``(dW/dx, dW/dy)`` times the cotangent (shape: batch), blockwise: the
    squared Euclidean VJP of ``dW/dC = P``, ``2 (x * P 1 - P y)`` and ``2 (y * P^T 1 - P^T x)``."""
    p_1, p_y, pt_1, pt_x = plan_products(xp, x, y, log_a, log_b, f, g, eps)
    cot = cotangent[..., None, None]
    return 2.0 * cot * (p_1[..., None] * x - p_y), 2.0 * cot * (pt_1[..., None] * y - pt_x)
