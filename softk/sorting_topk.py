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

from ._dispatch import values_known
from ._layout import from_rows, last_order, to_rows
from ._op import differentiable
from ._ot.implicit import plan_vjp
from ._ot.newton import semidual_newton_plan_t
from ._validate import check_axis, check_choice, check_finite_values, check_int, check_nonempty, namespace_of
from ._warnings import warn_if_not_converged
from ._xp import add_at_rows
from .sorting import hard_potentials, solver_params, transport_plan
from .topk import SCALES, SecondOrderOp, check_static_epsilon

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


def _scores(xp: Any, rows: Any, largest: bool, scale: str) -> Any:
    """``y`` (the smallest-k problem's scores); for ``scale="scores"`` centred on the anchors
    (a shift only adds row and column constants to the cost, so the plan is unchanged)."""
    y = -rows if largest else rows
    if scale == "paper":
        return y
    return y - 0.5 * (xp.max(y, axis=-1, keepdims=True) + xp.min(y, axis=-1, keepdims=True))


def _normalise(xp: Any, dist: Any, scale: str, axes: tuple[int, int]) -> Any:
    """The cost's divisor: its largest entry (``"paper"``) or 2 (``"scores"``: then the plan
    depends on ``y_i j / epsilon`` only, epsilon a temperature in the units of ``x``)."""
    if scale == "paper":
        return xp.max(dist, axis=axes, keepdims=True)
    return xp.full_like(dist[..., :1, :1], 2.0)


def _cost(xp: Any, rows: Any, k: int, largest: bool, scale: str) -> tuple[Any, Any, Any]:
    y = _scores(xp, rows, largest, scale)
    anchors = xp.arange(k + 1, dtype=rows.dtype, device=device(rows))
    dist = (y[..., :, None] - anchors) ** 2
    return y, dist, _normalise(xp, dist, scale, (-2, -1))


def _one_hot_ranks(xp: Any, rows: Any, k: int, largest: bool) -> Any:
    """``(..., n, k)``: column ``r`` marks the entry of rank ``r + 1`` (ties: lowest index)."""
    order = xp.argsort(rows, axis=-1, descending=largest, stable=True)[..., :k]
    positions = xp.arange(rows.shape[-1], device=device(rows))
    return xp.astype(order[..., None, :] == positions[:, None], rows.dtype)


def _forward(xp, x, *, k, epsilon, largest, axis, method, tol, max_iter, scale, straight_through):
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
        y = _scores(xp, rows, largest, scale)
        dist_t = (y[..., None, :] - anchors[:, None]) ** 2
        norm = _normalise(xp, dist_t, scale, (-2, -1))
        _, g0 = hard_potentials(xp, y, anchors, weights, sources=False)
        result, plan_t = semidual_newton_plan_t(
            xp, dist_t / norm, log_a, log_b, epsilon, tol=tol, max_iter=max_iter, init=g0 / norm[..., 0]
        )
        warn_if_not_converged(xp, result.converged, "soft_topk_sorted's newton solver")
        plan = xp.matrix_transpose(plan_t)
    else:
        y, dist, norm = _cost(xp, rows, k, largest, scale)
        f0, g0 = hard_potentials(xp, y, anchors, weights, sources=True)
        init = (f0 / norm[..., 0], g0 / norm[..., 0])
        plan = transport_plan(
            xp, dist / norm, log_a, log_b, epsilon, method=method, tol=tol, max_iter=max_iter, what="soft_topk_sorted",
            init=init,
        )
    out = _one_hot_ranks(xp, rows, k, largest) if straight_through else n * plan[..., :k]
    return _outward(xp, out, axis, x.dtype), (plan,)


def _residuals(xp, arrays, out, *, k, epsilon, largest, axis, method, tol, max_iter, scale, straight_through):
    """The plan from the (soft) output, differentiably: ``P[:, :k] = A / n`` and the last
    column makes each row sum to ``1 / n``. ``None`` for straight-through (the output is hard)."""
    if straight_through:
        return None
    a = _inward(xp, out, axis)
    n = a.shape[-2]
    return (xp.concat([a, 1.0 - xp.sum(a, axis=-1, keepdims=True)], axis=-1) / n,)


def _backward(xp, arrays, residuals, cotangent, *, k, epsilon, largest, axis, method, tol, max_iter, scale, straight_through):
    (x,) = arrays
    (plan,) = residuals
    rows = to_rows(xp, x, axis)
    n = rows.shape[-1]
    v = _inward(xp, cotangent, axis)
    y, dist, norm = _cost(xp, rows, k, largest, scale)
    cot = xp.concat([n * v, xp.zeros_like(v[..., :1])], axis=-1)
    grad_cost = plan_vjp(xp, plan, cot, epsilon)  # dL/dC with C = dist / norm
    grad_dist = grad_cost / norm
    anchors = xp.arange(k + 1, dtype=rows.dtype, device=device(rows))
    grad_y = 2.0 * (y * xp.sum(grad_dist, axis=-1) - xp.squeeze(grad_dist @ anchors[:, None], axis=-1))
    if scale == "scores":  # the divisor 2 is a constant
        return (from_rows(xp, -grad_y if largest else grad_y, axis, x.dtype),)
    # norm = max_ij dist_ij: its gradient 2 (y_i - j) goes to the maximising cell
    grad_scale = -xp.sum(grad_dist * dist, axis=(-2, -1)) / norm[..., 0, 0]
    cell = xp.argmax(xp.reshape(dist, (*dist.shape[:-2], -1)), axis=-1)
    row, col = cell // (k + 1), cell % (k + 1)
    y_at = xp.squeeze(xp.take_along_axis(y, row[..., None], axis=-1), axis=-1)
    grad_y = add_at_rows(xp, grad_y, row, 2.0 * (y_at - xp.astype(col, y.dtype)) * grad_scale)
    grad = -grad_y if largest else grad_y
    return (from_rows(xp, grad, axis, x.dtype),)


SOFT_TOPK_SORTED = SecondOrderOp("soft_topk_sorted", _forward, _backward, residuals=_residuals)


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
    scale: str = "paper",
    straight_through: bool = False,
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
        Entropic regularisation (a static Python float), in the units ``scale`` says.
    largest : bool
        Rank the largest (default) or the smallest scores.
    axis : int
        Axis of the scores.
    method : {"newton", "sinkhorn", "auto"}
        Semi-dual Newton (machine-precision marginals at any ``epsilon``;
        ``"auto"`` uses it for ``k < 32``) or log-domain Sinkhorn.
    tol, max_iter : optional
        Stopping rule (see :func:`softk.soft_sort`).
    scale : {"paper", "scores"}
        ``"paper"`` (default, unchanged results): the cost ``(y_i - j)^2`` is
        divided by its largest entry. ``"scores"``: it is divided by 2, so the
        plan depends on ``x / epsilon`` only: ``epsilon`` is a temperature in the
        units of ``x`` (invariant to shifting ``x``; scaling ``x`` and
        ``epsilon`` together changes nothing).
    straight_through : bool
        Forward the exact one-hot ranks of the top ``k`` (ties to the lowest
        index) and backpropagate the soft operator's gradient at ``epsilon``.

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
    epsilon = check_static_epsilon(epsilon)
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {largest!r}")
    check_choice("scale", scale, SCALES)
    if not isinstance(straight_through, bool):
        raise TypeError(f"straight_through must be a bool, got {straight_through!r}")
    params = dict(k=k, epsilon=epsilon, largest=largest, axis=axis, scale=scale, straight_through=straight_through)
    params.update(solver_params(xp, x, method, tol, max_iter, k + 1))
    check_finite_values(xp, "x", x)
    if values_known(xp, x) and x.size:
        # the anchor cost squares the scores: refuse what would overflow rather than return NaN
        limit = math.sqrt(float(xp.finfo(x.dtype).max)) / (4.0 * (k + 1))
        if bool(xp.max(xp.abs(x)) > limit):  # a comparison: no autograd-tracked scalar to read
            raise ValueError(f"x has entries beyond {limit:.3g}, whose squares overflow {x.dtype} in the anchor cost: rescale x")
    return (x,), params
