"""SOFT top-k (Xie et al. 2020): the top-k indicator as a two-anchor entropic OT plan.

Scores ``x_i`` (weights 1/n) are transported to anchors ``y = (0, 1)`` with
masses ``(k/n, (n-k)/n)`` under the cost ``C_ij = (x_i - y_j)^2 / M``,
``M = max_ij (x_i - y_j)^2``; the k smallest scores go to anchor 0 and the soft
indicator is ``A = n P[:, 0]``. The largest-k version is the smallest-k version
of ``-x``. ``M`` is part of the function and is differentiated (its gradient
goes to the extreme score), so gradients are exact derivatives.

Two solvers give the same plan:

* ``method="exact"``: ``A_i = sigmoid((s_i - t) / eps)``, ``s_i = C_i1 - C_i0 =
  (1 - 2 x_i) / M``, with the threshold ``t`` from :mod:`softk._threshold`; its
  VJP is closed-form and O(n): with ``d = A (1 - A)``,
  ``grad_s = d * (v - (d . v) / sum(d)) / eps``.
* ``method="sinkhorn"``: the generic log-domain Sinkhorn core; its VJP is the
  implicit (Schur complement) differentiation of the plan, :func:`plan_vjp`.

Neither unrolls iterations: memory is O(n) per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from ._dispatch import values_known
from ._layout import from_rows, to_rows
from ._op import CoreOp, differentiable
from ._ot.dense import sinkhorn_log
from ._ot.implicit import plan_vjp
from ._ot.plan import plan_from_potentials
from ._threshold import first_k, hard_epsilon, hard_select, soft_select
from ._validate import (
    check_axis,
    check_choice,
    check_finite_values,
    check_int,
    check_nonempty,
    check_positive_float,
    namespace_of,
)
from ._warnings import warn_if_not_converged
from ._xp import add_at_rows, into

__all__ = ["soft_topk", "SecondOrderOp", "check_static_epsilon"]

METHODS = ("exact", "sinkhorn")
SCALES = ("paper", "scores")


@dataclass(frozen=True, eq=False)
class SecondOrderOp(CoreOp):
    """A :class:`~softk._op.CoreOp` whose backward the framework may differentiate again.

    ``residuals(xp, arrays, out, **params)`` rebuilds the forward's residuals from
    the inputs and the output with differentiable array operations (or returns
    ``None`` when it cannot); the glue calls it, then ``backward``, with its
    autograd recording when a second derivative is asked for (PyTorch's
    ``create_graph=True``). Ops without it refuse double backward.
    """

    residuals: Callable[..., Any] | None = None


def check_static_epsilon(epsilon: Any) -> float:
    """``epsilon`` as a positive Python float; a tensor requiring a gradient is refused by name
    (its gradient would be silently dropped: epsilon is a static parameter)."""
    if getattr(epsilon, "requires_grad", False):
        raise TypeError(
            "epsilon must be a Python float: softk has no gradient with respect to epsilon, "
            "and a tensor requiring grad would have its gradient silently dropped (pass float(epsilon))"
        )
    return check_positive_float("epsilon", epsilon)


def _range(xp: Any, x: Any, largest: bool) -> tuple[Any, Any]:
    """``R`` with ``M = R^2 = max_i max(y_i^2, (y_i - 1)^2)`` for ``y = -x`` (largest) or ``x``,
    and whether that max sits at ``max(y)`` (else at ``min(y)``)."""
    x_max, x_min = xp.max(x, axis=-1, keepdims=True), xp.min(x, axis=-1, keepdims=True)
    y_max, y_min = (-x_min, -x_max) if largest else (x_max, x_min)
    above, below = y_max - 0.5, 0.5 - y_min
    return xp.maximum(above, below) + 0.5, above >= below


def _extreme(xp: Any, x: Any, largest: bool, upper: Any, top_index: Any) -> tuple[Any, Any]:
    """Where ``M`` is attained: per row ``dR/dx`` at the extreme entry (+1 at ``max(x)``,
    -1 at ``min(x)``, shape (..., 1)) and that entry's index (shape (...,)).

    The extreme is the most selected entry where ``upper`` is False; ``top_index``
    (from the partial sort, or ``None``) then saves a full ``argmax`` pass.
    """
    at_x_max = upper != largest  # the extreme y is max(x) or min(x)
    row_sign = xp.where(at_x_max, xp.ones_like(x[..., :1]), -xp.ones_like(x[..., :1]))
    known = values_known(xp, upper)
    if top_index is not None and known and not bool(xp.any(upper)):
        return row_sign, top_index
    if known and bool(xp.all(at_x_max)):
        return row_sign, xp.argmax(x, axis=-1)
    if known and not bool(xp.any(at_x_max)):
        return row_sign, xp.argmin(x, axis=-1)
    # traced (e.g. under jax.jit) or mixed rows: first index of the extreme value, fused by XLA
    extreme = xp.where(at_x_max, xp.max(x, axis=-1, keepdims=True), xp.min(x, axis=-1, keepdims=True))
    positions = xp.arange(x.shape[-1], device=device(x))
    return row_sign, xp.min(xp.where(x == extreme, positions, x.shape[-1]), axis=-1)


def _anchor_cost(xp: Any, y: Any, m: Any) -> Any:
    """``C`` of shape (..., n, 2): squared distances to the anchors 0 and 1, over ``M``."""
    return xp.stack([y * y, (y - 1.0) * (y - 1.0)], axis=-1) / m[..., None]


def _anchor_log_weights(xp: Any, y: Any, k: int) -> tuple[Any, Any]:
    n = y.shape[-1]
    dev = device(y)
    log_a = xp.full(y.shape, -math.log(n), dtype=y.dtype, device=dev)
    log_b = xp.asarray([math.log(k / n), math.log((n - k) / n)], dtype=y.dtype, device=dev)
    return log_a, xp.broadcast_to(log_b, (*y.shape[:-1], 2))


def _normaliser(xp, rows, largest, scale, epsilon):
    """``(R, upper)`` of :func:`_range` for the paper's ``M = R^2``. For ``scale="scores"``
    ``M = 2`` (``R = sqrt 2``), a constant: the sigmoid's argument is then ``(x_i - t) / eps``;
    it is raised to ``R_paper^2 ulp / (16 eps)`` where that is larger, so the inverse temperature
    stays where the threshold can be resolved (the paper scale's hard limit), and treated as a
    constant (the gradient there is zero up to rounding)."""
    radius, upper = _range(xp, rows, largest)
    if scale == "paper":
        return radius, upper
    floor = radius * radius * (hard_epsilon(xp, rows.dtype) / epsilon)
    return xp.sqrt(xp.maximum(floor, xp.full_like(floor, 2.0))), None


def _centred(xp, y, scale):
    """``y`` shifted so its range is centred on 0 for ``scale="scores"`` (the plan does not change:
    the shift only adds row and column constants to the cost)."""
    if scale == "paper":
        return y
    return y - 0.5 * (xp.max(y, axis=-1, keepdims=True) + xp.min(y, axis=-1, keepdims=True))


def _is_hard(xp, dtype, epsilon, scale):
    return scale == "paper" and epsilon < hard_epsilon(xp, dtype)


def _forward(xp, x, *, k, epsilon, largest, axis, method, tol, max_iter, scale, straight_through):
    rows = to_rows(xp, x, axis)
    radius, upper = _normaliser(xp, rows, largest, scale, epsilon)
    m = radius * radius
    top_index = None
    if _is_hard(xp, rows.dtype, epsilon, scale):  # the limit: the hard mask, zero gradient
        indicator = hard_select(xp, rows, k, largest=largest)
        residual = xp.zeros_like(indicator)
    elif method == "exact":
        result = soft_select(xp, rows, k, 2.0 / (m * epsilon), largest=largest)
        indicator, residual, top_index = result.indicator, result.sensitivity, result.top_index
        warn_if_not_converged(xp, result.converged, "soft_topk's threshold solver")
    else:
        y = _centred(xp, -rows if largest else rows, scale)
        cost = _anchor_cost(xp, y, m)
        log_a, log_b = _anchor_log_weights(xp, y, k)
        potentials = sinkhorn_log(xp, cost, log_a, log_b, epsilon, tol=tol, max_iter=max_iter)
        warn_if_not_converged(xp, potentials.converged, "soft_topk's Sinkhorn solver")
        plan = plan_from_potentials(xp, cost, log_a, log_b, potentials.f, potentials.g, epsilon)
        indicator, residual = y.shape[-1] * plan[..., 0], plan
    if straight_through:  # the forward is the hard mask, the gradient the soft one
        indicator = first_k(xp, rows, k, largest=largest)
    if scale == "scores":
        return from_rows(xp, indicator, axis, x.dtype), (residual, radius)
    row_sign, index = _extreme(xp, rows, largest, upper, top_index)
    return from_rows(xp, indicator, axis, x.dtype), (residual, radius, row_sign, index)


def _residuals(xp, arrays, out, *, k, epsilon, largest, axis, method, tol, max_iter, scale, straight_through):
    """The residuals as differentiable functions of ``x`` and the (soft) output, for second
    derivatives; ``None`` where the output does not determine them (straight-through)."""
    if straight_through:
        return None
    (x,) = arrays
    rows, a = to_rows(xp, x, axis), to_rows(xp, out, axis)
    radius, upper = _normaliser(xp, rows, largest, scale, epsilon)
    if _is_hard(xp, rows.dtype, epsilon, scale):
        residual = xp.zeros_like(a)
    elif method == "exact":
        residual = a * (1.0 - a)
    else:  # two anchors: the plan's rows are (A, 1 - A) / n
        residual = xp.stack([a, 1.0 - a], axis=-1) / a.shape[-1]
    if scale == "scores":
        return residual, radius
    return (residual, radius, *_extreme(xp, rows, largest, upper, None))


def _backward(xp, arrays, residuals, cotangent, *, k, epsilon, largest, axis, method, tol, max_iter, scale, straight_through):
    (x,) = arrays
    residual, radius = residuals[:2]
    rows = to_rows(xp, x, axis)
    v = to_rows(xp, cotangent, axis)
    m = radius * radius
    sign = -1.0 if largest else 1.0  # y = sign * x is the smallest-k problem
    if method == "exact" or _is_hard(xp, rows.dtype, epsilon, scale):
        # A_i = sigmoid((s_i - t) / eps), s_i = (1 - 2 y_i) / M, t fixed by sum(A) = k.
        # One allocation (the gradient), in-place passes over it for the four row sums.
        d = residual  # A (1 - A)
        grad = d * v
        sum_dv = xp.sum(grad, axis=-1, keepdims=True)
        grad *= rows
        sum_dvx = xp.sum(grad, axis=-1, keepdims=True)
        grad = into(xp, grad, xp.multiply, d, rows)
        sum_dx = xp.sum(grad, axis=-1, keepdims=True)
        tiny = xp.asarray(xp.finfo(d.dtype).smallest_normal, dtype=d.dtype, device=device(d))
        mean_v = sum_dv / xp.maximum(xp.sum(d, axis=-1, keepdims=True), tiny)
        grad = into(xp, grad, xp.subtract, v, mean_v)
        grad *= d  # d * (v - mean_v) = eps * dL/ds, which sums to zero
        grad_m = (2.0 * sign / (m * m * epsilon)) * (sum_dvx - mean_v * sum_dx)  # sum(grad * x)
        grad *= (-2.0 * sign) / (m * epsilon)
    else:
        plan = residual
        y = _centred(xp, -rows if largest else rows, scale)
        cot = xp.stack([y.shape[-1] * v, xp.zeros_like(v)], axis=-1)
        grad_c = plan_vjp(xp, plan, cot, epsilon)
        grad = (2.0 * sign) * (grad_c[..., 0] * y + grad_c[..., 1] * (y - 1.0)) / m
        grad_m = -xp.sum(grad_c * _anchor_cost(xp, y, m), axis=(-2, -1))[..., None] / m
    if scale == "scores":  # M = 2 is a constant
        return (from_rows(xp, grad, axis, x.dtype),)
    # the gradient through M = R^2 goes to the extreme entry: dM/dx = 2 R dR/dx there
    row_sign, index = residuals[2:]
    grad = add_at_rows(xp, grad, index, (2.0 * radius * grad_m * row_sign)[..., 0])
    return (from_rows(xp, grad, axis, x.dtype),)


SOFT_TOPK = SecondOrderOp("soft_topk", _forward, _backward, residuals=_residuals)


@differentiable(SOFT_TOPK)
def soft_topk(
    x: Any,
    k: int,
    *,
    epsilon: float = 0.1,
    largest: bool = True,
    axis: int = -1,
    method: str = "exact",
    tol: float = 1e-6,
    max_iter: int = 10_000,
    scale: str = "paper",
    straight_through: bool = False,
) -> Any:
    """Soft top-k indicator along ``axis``: values in [0, 1] summing to ``k``.

    ``A = n P[:, 0]`` for the entropic OT plan ``P`` of the SOFT top-k
    problem (Xie et al. 2020); ``A`` tends to the hard top-k mask as
    ``epsilon -> 0`` (error linear in ``epsilon``, inverse in the gap between
    the k-th and (k+1)-th scores).

    Parameters
    ----------
    x : array (NumPy, CuPy, PyTorch, JAX, or any array-API library), real floating
        Scores; any leading/trailing batch dimensions. Must be finite.
    k : int
        Number of entries to select, ``1 <= k < n`` with ``n = x.shape[axis]``.
    epsilon : float
        Entropic regularisation, in the units ``scale`` says. A static Python
        float (not traced under ``jax.jit``; a tensor requiring a gradient is
        refused: there is no gradient with respect to ``epsilon``). With
        ``scale="paper"``, below ``ulp / 16`` of the dtype (7e-9 in float32,
        1.4e-17 in float64) the result is the limit, the hard mask (ties share
        the last places), with a zero gradient.
    largest : bool
        Select the ``k`` largest (default) or the ``k`` smallest scores.
        ``soft_topk(x, k, largest=True) == soft_topk(-x, k, largest=False)``.
    axis : int
        Axis of the scores; all other axes are batch axes.
    method : {"exact", "sinkhorn"}
        ``"exact"``: the two-anchor threshold solved by safeguarded Newton to
        machine precision. ``"sinkhorn"``: the generic Sinkhorn core, stopped at
        row-marginal error ``tol`` or after ``max_iter`` iterations (a
        :class:`softk.NotConvergedWarning` says so). Both have exact gradients
        without unrolling.
    tol, max_iter :
        Sinkhorn stopping rule (``method="sinkhorn"`` only).
    scale : {"paper", "scores"}
        ``"paper"`` (default, the SOFT paper's and softk's original choice, kept
        so existing results do not change): the cost is divided by its largest
        entry ``M``, so ``epsilon`` is relative and in (0, 1]; the result then
        depends on where the scores sit (``x + 10`` is blurrier than ``x``).
        ``"scores"``: ``A_i = sigmoid((x_i - t) / epsilon)``, ``epsilon`` a
        temperature in the units of ``x``: shifting ``x`` changes nothing and
        scaling ``x`` and ``epsilon`` together leaves ``A`` unchanged. Prefer it
        when the scores drift during training.
    straight_through : bool
        Forward the exact hard mask (1 on the ``k`` best entries, ties to the
        lowest index as in ``jax.lax.top_k`` and a stable sort; ``torch.topk``
        leaves the order of ties unspecified) and backpropagate the soft
        operator's gradient at ``epsilon``.

    Returns
    -------
    array
        Same shape, array type, dtype and device as ``x``.

    Examples
    --------
    >>> import numpy as np, softk
    >>> a = softk.soft_topk(np.array([0.1, 3.0, -2.0, 1.0]), 2, epsilon=1e-3)
    >>> np.round(a, 6).tolist()
    [0.0, 1.0, 0.0, 1.0]
    >>> softk.soft_topk(np.array([0.1, 3.0, -2.0, 1.0]), 2, epsilon=1.0, scale="scores").round(3).tolist()
    [0.392, 0.921, 0.073, 0.613]
    """
    xp = namespace_of(x=x)
    axis = check_axis(axis, x.ndim)
    n = x.shape[axis]
    if n is None:
        raise ValueError("x must have a known length along axis")
    if n < 2:
        raise ValueError(f"x must have at least 2 entries along axis {axis}, got {n}")
    k = check_int("k", k, 1, n - 1)
    epsilon = check_static_epsilon(epsilon)
    check_choice("method", method, METHODS)
    check_choice("scale", scale, SCALES)
    if not isinstance(straight_through, bool):
        raise TypeError(f"straight_through must be a bool, got {straight_through!r}")
    if not isinstance(largest, bool):
        raise TypeError(f"largest must be a bool, got {largest!r}")
    tol = check_positive_float("tol", tol)
    max_iter = check_int("max_iter", max_iter, 1, 10**9)
    check_finite_values(xp, "x", x)
    if method == "sinkhorn":
        check_nonempty(x)
    params = dict(k=k, epsilon=epsilon, largest=largest, axis=axis, method=method, tol=tol, max_iter=max_iter)
    params.update(scale=scale, straight_through=straight_through)
    return (x,), params
