"""Ground costs between point clouds, and their vector-Jacobian products.

Only the squared Euclidean cost ``C_ij = ||x_i - y_j||^2`` is built in (pass
any other cost as a matrix). It is formed as ``|x|^2 + |y|^2 - 2 x y^T``
(one matrix product, clamped at 0); its VJP for a cotangent ``G`` (..., n, m)
is ``dx = 2 (x * G 1 - G y)``, ``dy = 2 (y * G^T 1 - G^T x)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sqeuclidean", "sqeuclidean_vjp"]


def sqeuclidean(xp: Any, x: Any, y: Any) -> Any:
    """``||x_i - y_j||^2`` for ``x`` (..., n, d) and ``y`` (..., m, d).

    Examples
    --------
    >>> import numpy as np
    >>> sqeuclidean(np, np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0]])).tolist()
    [[1.0], [1.0]]
    """
    cross = x @ xp.matrix_transpose(y)
    cost = xp.sum(x * x, axis=-1)[..., :, None] + xp.sum(y * y, axis=-1)[..., None, :]
    cost -= 2.0 * cross
    return xp.maximum(cost, xp.zeros_like(cost[..., :1, :1]))


def sqeuclidean_vjp(xp: Any, x: Any, y: Any, grad_cost: Any) -> tuple[Any, Any]:
    """Gradients w.r.t. ``x`` and ``y`` of ``<grad_cost, sqeuclidean(x, y)>``."""
    grad_x = 2.0 * (x * xp.sum(grad_cost, axis=-1)[..., None] - grad_cost @ y)
    grad_y = 2.0 * (y * xp.sum(grad_cost, axis=-2)[..., None] - xp.matrix_transpose(grad_cost) @ x)
    return grad_x, grad_y
