"""Sorted SOFT top-k (Xie et al. 2020): a soft assignment of the scores to ranks 1..k.

Scores ``y_i`` (``y = -x`` for the largest, ``y = x`` for the smallest; weights
``1/n``) are transported to the ``k + 1`` anchors ``0, 1, ..., k`` with masses
``1/n`` for each of the rank anchors ``0 .. k-1`` and ``(n-k)/n`` for anchor
``k`` (everything else), under ``C_ij = (y_i - j)^2 / M``, ``M = max_ij (y_i - j)^2``
(part of the function, differentiated: its gradient goes to the extreme
score). The output ``A = n P[:, :k]`` has ``A[i, r] ~ [x_i has rank r + 1]``:
columns sum to 1, rows to at most 1, and ``A`` tends to the one-hot ranks as
``epsilon -> 0``. Solved by semi-dual Newton (few targets) or Sinkhorn; the
gradient is the implicit VJP of the plan (:func:`softk._ot.implicit.plan_vjp`).
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from ._layout import from_rows, last_order, to_rows
from ._op import CoreOp, differentiable
from ._validate import check_axis, check_nonempty, check_finite_values, check_int, check_positive_float, namespace_of
from ._warnings import warn_if_not_converged
from ._xp import add_at_rows
from ._ot.implicit import plan_vjp
from ._ot.newton import semidual_newton_plan_t
from .sorting import hard_potentials, solver_params, transport_plan

__all__ = ["soft_topk_sorted"]


def _outward(xp: Any, out: Any, axis: int, dtype: Any) -> Any:
    """``(..., n, k)`` rows back to ``x``'s layout with a trailing ``k`` axis."""
    out = xp.astype(out, dtype, copy=False)
    if axis == -1:
        return out
    order = last_order(out.ndim - 1, axis)
    return xp.permute_dims(out, (*(order.index(i) for i in range(out.ndim - 1)), out.ndim - 1))


def _inward(xp: Any, v: Any, axis: int) -> Any:
    """Inverse of :func:`_outward` (before the dtype cast)."""
    if axis != -1:
        v = xp.permute_dims(v, (*last_order(v.ndim - 1, axis), v.ndim - 1))
    return xp.astype(v, xp.float32) if xp.finfo(v.dtype).bits < 32 else v


def _cost(xp: Any, rows: Any, k: int, largest: bool) -> tuple[Any, Any, Any]:
    y = -rows if largest else rows
    anchors = xp.arange(k + 1, dtype=rows.dtype, device=device(rows))
    dist = (y[..., :, None] - anchors) ** 2
    scale = xp.max(dist, axis=(-2, -1), keepdims=True)
    return y, dist, scale


def _forward(xp, x, *, k, epsilon, largest, axis, method, tol, max_iter):
    rows = to_rows(xp, x, axis)
    n = rows.shape[-1]
    dev, dtype = device(rows), rows.dtype
    log_a = xp.full(rows.shape, -math.log(n), dtype=dtype, device=dev)
    weights = [1.0 / n] * k + [(n - k) / n]
    log_b = xp.asarray([-math.log(n)] * k + [math.log((n - k) / n)], dtype=dtype, device=dev)
    log_b = xp.broadcast_to(log_b, (*rows.shape[:-1], k + 1))
    # warm start: the unregularised (sorting) potentials of the normalised cost
    anchors = xp.arange(k + 1, dtype=dtype, device=dev)
    if method == "newton":
        # the solver's own (k + 1, n) layout: its reductions then run over the long axis
        y = -rows if largest else rows
        dist_t = (y[..., None, :] - anchors[:, None]) ** 2
        scale = xp.max(dist_t, axis=(-2, -1), keepdims=True)
        _, g0 = hard_potentials(xp, y, anchors, weights, sources=False)
        result, plan_t = semidual_newton_plan_t(
            xp, dist_t / scale, log_a, log_b, epsilon, tol=tol, max_iter=max_iter, init=g0 / scale[..., 0]
        )
        warn_if_not_converged(xp, result.converged, "soft_topk_sorted's newton solver")
        plan = xp.matrix_transpose(plan_t)
    else:
        y, dist, scale = _cost(xp, rows, k, largest)
        f0, g0 = hard_potentials(xp, y, anchors, weights, sources=True)
        init = (f0 / scale[..., 0], g0 / scale[..., 0])
        plan = transport_plan(
            xp, dist / scale, log_a, log_b, epsilon, method=method, tol=tol, max_iter=max_iter, what="soft_topk_sorted",
            init=init,
        )
    return _outward(xp, n * plan[..., :k], axis, x.dtype), (plan,)


def _backward(xp, arrays, residuals, cotangent, *, k, epsilon, largest, axis, method, tol, max_iter):
    (x,) = arrays
    (plan,) = residuals
    rows = to_rows(xp, x, axis)
    n = rows.shape[-1]
    v = _inward(xp, cotangent, axis)
    y, dist, scale = _cost(xp, rows, k, largest)
    cot = xp.concat([n * v, xp.zeros_like(v[..., :1])], axis=-1)
    grad_cost = plan_vjp(xp, plan, cot, epsilon)  # dL/dC with C = dist / scale
    grad_dist = grad_cost / scale
    anchors = xp.arange(k + 1, dtype=rows.dtype, device=device(rows))
    grad_y = 2.0 * (y * xp.sum(grad_dist, axis=-1) - xp.squeeze(grad_dist @ anchors[:, None], axis=-1))
    # scale = max_ij dist_ij: its gradient 2 (y_i - j) goes to the maximising cell
    grad_scale = -xp.sum(grad_dist * dist, axis=(-2, -1)) / scale[..., 0, 0]
    cell = xp.argmax(xp.reshape(dist, (*dist.shape[:-2], -1)), axis=-1)
    row, col = cell // (k + 1), cell % (k + 1)
    y_at = xp.squeeze(xp.take_along_axis(y, row[..., None], axis=-1), axis=-1)
    grad_y = add_at_rows(xp, grad_y, row, 2.0 * (y_at - xp.astype(col, y.dtype)) * grad_scale)
    grad = -grad_y if largest else grad_y
    return (from_rows(xp, grad, axis, x.dtype),)


SOFT_TOPK_SORTED = CoreOp("soft_topk_sorted", _forward, _backward)


@differentiable(SOFT_TOPK_SORTED)
def soft_topk_sorted(
    x: Any,
    k: int,
    *,
    epsilon: float = 0.01,
    largest: bool = True,
    axis: int = -1,
    method: str = "newton",
    tol: float | None = None,
    max_iter: int | None = None,
) -> Any:
    """Sorted soft top-k: ``A[..., i, r]``, the soft indicator that ``x_i`` has rank ``r + 1``.

    ``A = n P[:, :k]`` for the entropic plan of the SOFT paper's ``k + 1``
    anchor problem (rank 1 is the largest score when ``largest``, else the
    smallest); each column sums to 1 and ``A @ arange(1, k + 1)`` is a soft
    rank. As ``epsilon -> 0``, ``A`` tends to the one-hot ranks of the top k.

    Parameters
    ----------
    x : array (NumPy, CuPy, PyTorch, JAX, ...), real floating, finite
        Scores; any batch dimensions.
    k : int
        ``1 <= k < n`` with ``n = x.shape[axis]``.
    epsilon : float
        Entropic regularisation relative to the max-normalised cost (static).
    largest : bool
        Rank the largest (default) or the smallest scores.
    axis : int
        Axis of the scores.
    method : {"newton", "sinkhorn", "auto"}
        Semi-dual Newton (machine-precision marginals at any ``epsilon``;
        ``"auto"`` uses it for ``k < 32``) or log-domain Sinkhorn.
    tol, max_iter : optional
        Stopping rule (see :func:`softk.soft_sort`).

    Returns
    -------
    array
        ``x``'s array type, dtype and device; shape ``x.shape + (k,)``: the
        score axis stays where it was and a trailing axis of size ``k`` indexes
        the ranks.

    Examples
    --------
    >>> import numpy as np, softk
    >>> a = softk.soft_topk_sorted(np.array([0.1, 3.0, -2.0, 1.0]), 2, epsilon=1e-3)
    >>> np.round(a, 6).tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    xp = namespace_of(x=x)
    axis = check_axis(axis, x.ndim)
    check_nonempty(x)
    n = x.shape[axis]
    if n is None or n < 2:
        raise ValueError(f"x must have at least 2 entries along axis {axis}, got {n}")
    k = check_int("k", k, 1, n - 1)
    epsilon = check_positive_float("epsilon", epsilon)
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {largest!r}")
    params = dict(k=k, epsilon=epsilon, largest=largest, axis=axis)
    params.update(solver_params(xp, x, method, tol, max_iter, k + 1))
    check_finite_values(xp, "x", x)
    return (x,), params
