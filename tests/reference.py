"""Independent float64 NumPy references: the SOFT top-k plan by bisection, Sinkhorn by kernel iterations."""

from __future__ import annotations

import numpy as np


def soft_topk_reference(x: np.ndarray, k: int, epsilon: float, largest: bool = True) -> np.ndarray:
    """SOFT top-k of the last axis, straight from the definition (docs/maths.md section 2).

    Eliminating f from the two-anchor plan gives A_i = sigmoid((C_i1 - C_i0 - t) / eps);
    t is found by 200 bisection steps on the monotone sum(A) = k.
    """
    x = np.asarray(x, dtype=np.float64)
    y = -x if largest else x
    cost = np.stack([y**2, (y - 1.0) ** 2], axis=-1)
    cost = cost / cost.max(axis=(-2, -1), keepdims=True)
    s = cost[..., 1] - cost[..., 0]
    lo = s.min(axis=-1, keepdims=True) - 50.0 * epsilon - 1.0
    hi = s.max(axis=-1, keepdims=True) + 50.0 * epsilon + 1.0

    def total(t):
        return (0.5 * (1.0 + np.tanh((s - t) / (2.0 * epsilon)))).sum(axis=-1, keepdims=True)

    for _ in range(200):
        mid = 0.5 * (lo + hi)
        too_many = total(mid) > k
        lo, hi = np.where(too_many, mid, lo), np.where(too_many, hi, mid)
    t = 0.5 * (lo + hi)
    return 0.5 * (1.0 + np.tanh((s - t) / (2.0 * epsilon)))


def sinkhorn_reference(cost: np.ndarray, a: np.ndarray, b: np.ndarray, epsilon: float, n_iter: int = 20000):
    """Plain kernel-mode Sinkhorn in float64 (fine for moderate cost / epsilon)."""
    kernel = np.exp(-cost / epsilon)
    u, v = np.ones_like(a), np.ones_like(b)
    for _ in range(n_iter):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def hard_topk_mask(x: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    order = np.argsort(-x if largest else x, axis=-1, kind="stable")
    mask = np.zeros_like(x, dtype=np.float64)
    np.put_along_axis(mask, order[..., :k], 1.0, axis=-1)
    return mask
