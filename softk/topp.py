"""Soft top-p (nucleus) selection: the two-anchor OT problem of soft top-k, weighted by the probabilities.

Tokens with logits ``z`` carry the masses ``pi = softmax(z)``; two anchors take
the masses ``p`` and ``1 - p``. As for soft top-k, the entropic plan depends on
one threshold per row (here in the units of the logits, ``epsilon`` a
temperature):

    A_i = sigmoid((z_i - t) / epsilon),   sum_i pi_i A_i = p,

solved to machine precision by the threshold solver of :mod:`softk._threshold`
(weighted). As ``epsilon -> 0``, ``A`` is the fractional nucleus: 1 on the most
probable tokens while the mass before them is below ``p``, the boundary token
the fraction that makes the mass exactly ``p``, 0 after.

Gradient (O(n)): with ``d = A (1 - A)``, ``D = sum pi d`` and a cotangent ``v``,
the threshold moves by ``dt = sum_i pi_i (d_i + epsilon (A_i - p)) dz_i / D``
(the softmax moves with ``z``), so ``grad_z = d (v - r pi) / epsilon - r pi (A - p)``
with ``r = (d . v) / D``.
"""

from __future__ import annotations

from typing import Any

from ._layout import from_rows, to_rows
from ._op import differentiable
from ._threshold import soft_select
from ._validate import check_axis, check_finite_values, namespace_of
from ._warnings import warn_if_not_converged
from .topk import SecondOrderOp, check_static_epsilon

__all__ = ["soft_topp"]


def _softmax(xp: Any, z: Any) -> Any:
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def _nucleus(xp: Any, z: Any, pi: Any, p: float) -> tuple[Any, Any]:
    """The boundary logit (shape (..., 1)) and the hard nucleus mask: the most probable tokens
    (ties to the lowest index) up to and including the first at which the mass reaches ``p``."""
    order = xp.argsort(z, axis=-1, descending=True, stable=True)
    sorted_pi = xp.take_along_axis(pi, order, axis=-1)
    before = xp.cumulative_sum(sorted_pi, axis=-1) - sorted_pi
    size = xp.sum(xp.astype(before < p, xp.int64), axis=-1, keepdims=True)  # >= 1: before[0] = 0
    boundary = xp.take_along_axis(xp.take_along_axis(z, order, axis=-1), size - 1, axis=-1)
    better, tied = z > boundary, xp.astype(z == boundary, z.dtype)
    room = xp.astype(size, z.dtype) - xp.sum(xp.astype(better, z.dtype), axis=-1, keepdims=True)
    mask = better | ((tied > 0) & (xp.cumulative_sum(tied, axis=-1) <= room))
    return boundary, xp.astype(mask, z.dtype)


def _forward(xp, z, *, p, epsilon, axis, straight_through):
    rows = to_rows(xp, z, axis)
    pi = _softmax(xp, rows)
    boundary, mask = _nucleus(xp, rows, pi, p)
    inverse = xp.full_like(boundary, 1.0 / epsilon)
    result = soft_select(xp, rows, p, inverse, largest=True, weights=pi, centre=boundary)
    warn_if_not_converged(xp, result.converged, "soft_topp's threshold solver")
    out = mask if straight_through else result.indicator
    return from_rows(xp, out, axis, z.dtype), (result.sensitivity, pi, result.indicator - p)


def _residuals(xp, arrays, out, *, p, epsilon, axis, straight_through):
    """``(A (1 - A), softmax(z), A - p)`` differentiably from ``z`` and the soft output."""
    if straight_through:
        return None
    a = to_rows(xp, out, axis)
    return a * (1.0 - a), _softmax(xp, to_rows(xp, arrays[0], axis)), a - p


def _backward(xp, arrays, residuals, cotangent, *, p, epsilon, axis, straight_through):
    (z,) = arrays
    d, pi, excess = residuals  # A (1 - A), softmax(z), A - p
    v = to_rows(xp, cotangent, axis)
    tiny = xp.finfo(d.dtype).smallest_normal
    weight = xp.sum(pi * d, axis=-1, keepdims=True)
    r = xp.sum(d * v, axis=-1, keepdims=True) / xp.maximum(weight, xp.full_like(weight, tiny))
    grad = d * (v - r * pi) / epsilon - r * pi * excess
    return (from_rows(xp, grad, axis, z.dtype),)


SOFT_TOPP = SecondOrderOp("soft_topp", _forward, _backward, residuals=_residuals)


@differentiable(SOFT_TOPP)
def soft_topp(logits: Any, p: float, *, epsilon: float = 0.1, axis: int = -1, straight_through: bool = False) -> Any:
    """Soft nucleus (top-p) mask along ``axis``: ``A`` in [0, 1] with ``sum softmax(logits) * A = p``.

    ``A_i = sigmoid((z_i - t) / epsilon)``, the threshold ``t`` fixed by the
    mass constraint (the two-anchor entropic OT plan with source masses
    ``softmax(z)`` and anchor masses ``(p, 1 - p)``). As ``epsilon -> 0`` it is
    the fractional nucleus: 1 on the most probable tokens while the mass before
    them is below ``p``, the boundary token fractional, 0 after.

    Parameters
    ----------
    logits : array (NumPy, CuPy, PyTorch, JAX, ...), real floating, finite
        Unnormalised log-probabilities; any batch dimensions.
    p : float
        The nucleus mass, ``0 < p < 1`` (static).
    epsilon : float
        Temperature of the selection, in the units of the logits (static;
        shifting the logits changes nothing).
    axis : int
        The vocabulary axis.
    straight_through : bool
        Forward the hard nucleus mask (1 on the smallest set of most probable
        tokens whose mass reaches ``p``, ties to the lowest index, as nucleus
        sampling keeps) and backpropagate the soft mask's gradient.

    Returns
    -------
    array
        The mask, shaped like ``logits``. Gradients flow to the logits, through
        the softmax too.

    Examples
    --------
    >>> import numpy as np, softk
    >>> z = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    >>> a = softk.soft_topp(z, 0.6, epsilon=1e-6)
    >>> a.round(6).tolist(), float((np.exp(z) * a).sum())
    ([1.0, 0.333333, 0.0, 0.0], 0.6)
    >>> softk.soft_topp(z, 0.6, straight_through=True).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    xp = namespace_of(logits=logits)
    axis = check_axis(axis, logits.ndim)
    n = logits.shape[axis]
    if n is None or n < 2:
        raise ValueError(f"logits must have at least 2 entries along axis {axis}, got {n}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < float(p) < 1.0:
        raise ValueError(f"p must be a Python float in (0, 1), got {p!r}")
    epsilon = check_static_epsilon(epsilon)
    if not isinstance(straight_through, bool):
        raise TypeError(f"straight_through must be a bool, got {straight_through!r}")
    check_finite_values(xp, "logits", logits)
    return (logits,), dict(p=float(p), epsilon=epsilon, axis=axis, straight_through=straight_through)
