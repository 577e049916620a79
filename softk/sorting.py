"""Soft sort, ranks and quantiles (Cuturi, Teboul, Vert 2019) as one entropic OT plan.

For scores ``x`` (length n along ``axis``, weights ``a_i = 1/n``), the inputs are
squashed to [0, 1] by ``s = sigmoid((x - mean(x)) / (std(x) + 1e-10))`` (the
population standard deviation; OTT-JAX's default), the targets are ``M``
increasing points ``y_j = j / (M - 1)`` with weights ``b``, the cost is
``C_ij = (s_i - y_j)^2`` and ``epsilon`` is absolute (the cost lies in [0, 1]).
From the entropic plan ``P``:

* soft ranks (``b = 1/m``): ``r_i = (1 / a_i) sum_j P_ij (n B_j)``, ``B = cumsum(b)``,
  i.e. 1-based ranks in units of ``n / m``;
* soft sort (``b = 1/m``): ``sort_j = (P^T x)_j / b_j``, ascending;
* soft quantiles at sorted levels ``q_1 < ... < q_K``: targets weighted
  ``[q_1 - w/2, w, q_2 - q_1 - w, w, ..., w, 1 - q_K - w/2]``, read the ``w`` targets.

Both solvers start from the unregularised potentials, which one sort gives in
1-D (:func:`hard_potentials`). Few targets (``M <= 32``) are solved by Newton on
the semi-dual (:mod:`softk._ot.newton`), more by Sinkhorn (:func:`softk._ot.solved.solved_plan`:
kernel-mode matrix-vector products with absorption and adaptive over-relaxation;
log-domain under ``jax.jit``). Either way the gradient is the implicit VJP of
the plan, chained through the squashing without forming an n x M array
(:func:`outer_plan_vjp`: every output's cotangent on the plan has rank one), with
a direct Schur-complement solve up to ``SCHUR_MAX`` (128) targets and conjugate gradients above.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any

from array_api_compat import device

from ._layout import from_rows, to_rows
from ._op import CoreOp, differentiable
from ._ot.implicit import schur_method, schur_solve
from ._ot.newton import semidual_newton_plan
from ._ot.solved import solved_plan
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

__all__ = ["soft_sort", "soft_rank", "soft_quantile", "transport_plan", "solver_params", "hard_potentials", "outer_plan_vjp"]

METHODS = ("auto", "newton", "sinkhorn")
NEWTON_MAX_TARGETS = 32


def solver_params(xp: Any, x: Any, method: str, tol: Any, max_iter: Any, n_targets: int) -> dict:
    """Validate and resolve ``method``/``tol``/``max_iter`` (``None``: the method's default)."""
    check_choice("method", method, METHODS)
    if method == "auto":
        method = "newton" if n_targets <= NEWTON_MAX_TARGETS else "sinkhorn"
    if tol is None:
        bits32 = xp.finfo(x.dtype).bits <= 32
        tol = (1e-5 if bits32 else 1e-12) if method == "newton" else (1e-6 if bits32 else 1e-9)
    tol = check_positive_float("tol", tol)
    if max_iter is None:
        max_iter = 200 if method == "newton" else 10_000
    max_iter = check_int("max_iter", max_iter, 1, 10**9)
    return dict(method=method, tol=tol, max_iter=max_iter)


def transport_plan(
    xp: Any, cost: Any, log_a: Any, log_b: Any, epsilon: float, *, method: str, tol: float, max_iter: int, what: str,
    init: tuple[Any, Any] | None = None,
) -> Any:
    """The entropic plan by ``"newton"`` (semi-dual) or ``"sinkhorn"``; warns if not converged.

    ``init = (f, g)``: warm start (e.g. :func:`hard_potentials`; Newton uses
    ``g`` only, ``f`` may be ``None``), which replaces epsilon continuation.
    Sinkhorn is :func:`softk._ot.solved.solved_plan` (kernel-mode, absorption-stabilised,
    over-relaxed, log-domain under ``jax.jit``; its ``error`` measured on the returned plan).
    """
    if method == "newton":
        g0 = None if init is None else init[1]
        result, plan = semidual_newton_plan(xp, cost, log_a, log_b, epsilon, tol=tol, max_iter=max_iter, init=g0)
        warn_if_not_converged(xp, result.converged, f"{what}'s {method} solver")
        return plan
    return solved_plan(xp, cost, log_a, log_b, epsilon, tol=tol, max_iter=max_iter, init=init, what=f"{what}'s {method} solver")[0]


def hard_potentials(xp: Any, s: Any, y: Any, weights: list[float], *, sources: bool = True) -> tuple[Any, Any]:
    """Unregularised OT potentials ``(f, g)`` between ``s`` (..., n; weights ``1/n``)
    and increasing targets ``y`` (m; ``weights``) for the cost ``(s_i - y_j)^2``.

    One sort: in 1-D the optimal plan is monotone. With ``G_j = y_j^2 - g_j``
    convex, its slope between ``y_j`` and ``y_{j+1}`` is ``2 sigma_j``, ``sigma_j``
    the sorted score at cumulative source mass ``b_1 + ... + b_j`` (the midpoint
    of the two scores when that mass falls between them); each score takes
    ``f_i = min_j C_ij - g_j`` at the target holding the middle of its mass.
    ``f_i + g_j <= C_ij`` with equality on the monotone plan's support: the
    eps -> 0 limit of the entropic potentials, and their warm start.
    ``sources=False`` skips ``f`` (returned as ``None``).
    """
    n, m = s.shape[-1], len(weights)
    dev = device(s)
    cum = list(itertools.accumulate(weights))
    lo = [min(max(math.ceil(c * n - 1e-9) - 1, 0), n - 1) for c in cum[:-1]]
    hi = [min(max(math.floor(c * n + 1e-9), 0), n - 1) for c in cum[:-1]]
    order = xp.argsort(s, axis=-1)
    ss = xp.take_along_axis(s, order, axis=-1)
    index = lambda idx: xp.asarray(idx, dtype=order.dtype, device=dev)  # noqa: E731
    sigma = 0.5 * (xp.take(ss, index(lo), axis=-1) + xp.take(ss, index(hi), axis=-1))
    steps = 2.0 * sigma * (y[1:] - y[:-1])
    big_g = xp.concat([xp.zeros_like(steps[..., :1]), xp.cumulative_sum(steps, axis=-1)], axis=-1)
    g = y * y - big_g
    if not sources:
        return None, g
    # the target holding the middle of each sorted score's mass
    middle = (xp.astype(xp.arange(n, device=dev), s.dtype) + 0.5) / n
    j = xp.clip(xp.searchsorted(xp.asarray(cum[:-1], dtype=s.dtype, device=dev), middle), max=m - 1)
    f_sorted = ss * ss - 2.0 * ss * xp.take(y, j) + xp.take(big_g, j, axis=-1)
    f = xp.take_along_axis(f_sorted, xp.argsort(order, axis=-1), axis=-1)
    return f, g


def _squash(xp: Any, x: Any) -> tuple[Any, Any, Any]:
    """``s = sigmoid(z)``, ``z = (x - mean) / (std + 1e-10)``; also ``z`` and ``std``.

    The mean and the standard deviation are taken of ``x / max|x|`` and scaled
    back, so inputs near the dtype's largest value (1e155 squared overflows
    float64) keep their spread."""
    big = xp.max(xp.abs(x), axis=-1, keepdims=True)
    big = xp.where(big > 0, big, xp.ones_like(big))
    unit = x / big
    centred_unit = unit - xp.mean(unit, axis=-1, keepdims=True)
    centred = big * centred_unit
    std = big * xp.std(centred_unit, axis=-1, keepdims=True)
    z = centred / (std + 1e-10)
    e = xp.exp(-xp.abs(z))  # stable on both sides
    s = xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return s, z, std


def _squash_vjp(xp: Any, s: Any, z: Any, std: Any, grad_s: Any) -> Any:
    """Pull ``grad_s`` back through ``_squash`` (the mean and the std are differentiated)."""
    gz = grad_s * s * (1.0 - s)
    denom = std + 1e-10
    n = z.shape[-1]
    # z = c / denom with c = x - mean; d std / dx = c / (n std) (0 for constant rows)
    dstd = xp.where(std > 0, z * denom / (n * xp.where(std > 0, std, xp.ones_like(std))), xp.zeros_like(z))
    gc = gz / denom - xp.sum(gz * z, axis=-1, keepdims=True) / denom * dstd
    # a constant row squashes to 1/2 whatever its value: no gradient (not 1 / 1e-10)
    return xp.where(std > 0, gc - xp.mean(gc, axis=-1, keepdims=True), xp.zeros_like(gc))


def _target_weights(m: int, quantiles: tuple, width: float) -> list[float]:
    """``m`` uniform weights, or the quantile targets' weights (fillers between width-``w`` targets)."""
    if not quantiles:
        return [1.0 / m] * m
    edges = [0.0, *quantiles, 1.0]
    fillers = [hi - lo - width for lo, hi in zip(edges, edges[1:])]
    fillers[0] += width / 2
    fillers[-1] += width / 2
    weights = [fillers[0]]
    for filler in fillers[1:]:
        weights += [width, filler]
    return weights


def _problem(xp: Any, rows: Any, n: int, m: int, quantiles: tuple, width: float) -> tuple:
    s, z, std = _squash(xp, rows)
    weights = _target_weights(m, quantiles, width)
    dev, dtype = device(rows), rows.dtype
    y = xp.linspace(0.0, 1.0, len(weights), dtype=dtype, device=dev)
    log_a = xp.full(rows.shape, -math.log(n), dtype=dtype, device=dev)
    b = xp.asarray(weights, dtype=dtype, device=dev)
    log_b = xp.broadcast_to(xp.log(b), (*rows.shape[:-1], len(weights)))
    return s, z, std, y, log_a, log_b, b, weights


def _times(xp: Any, plan: Any, vecs: Any) -> Any:
    """``P @ vecs^T`` for ``vecs`` (..., k, m): (..., k, n), as one product with ``P^T`` (a view)."""
    return vecs @ xp.matrix_transpose(plan)


def _forward(xp, x, *, kind, m, quantiles, width, descending, scalar, epsilon, axis, method, tol, max_iter):
    rows = to_rows(xp, x, axis)
    n = rows.shape[-1]
    s, _, _, y, log_a, log_b, b, weights = _problem(xp, rows, n, m, quantiles, width)
    cost = (s[..., :, None] - y) ** 2
    init = hard_potentials(xp, s, y, weights, sources=method == "sinkhorn")
    plan = transport_plan(
        xp, cost, log_a, log_b, epsilon, method=method, tol=tol, max_iter=max_iter, what=f"soft_{kind}", init=init
    )
    del cost
    if kind == "rank":
        out = n * xp.squeeze(_times(xp, plan, (n * xp.cumulative_sum(b))[None, :]), axis=-2)
    else:
        # P^T x over the plan's own column masses (b to the solver's tolerance): a weighted mean
        # of the scores, so sorted values and quantiles stay in the data's range whatever epsilon
        out = xp.squeeze(rows[..., None, :] @ plan, axis=-2) / xp.sum(plan, axis=-2)
        if kind == "quantile":
            out = out[..., 1::2]
        elif descending:
            out = xp.flip(out, axis=-1)
    out = from_rows(xp, out, axis, x.dtype)
    return (xp.squeeze(out, axis=axis) if scalar else out), (plan,)


def outer_plan_vjp(xp: Any, plan: Any, c: Any, d: Any, s: Any, y: Any, epsilon: float, *, method: str, cg_tol: float) -> Any:
    """Gradient w.r.t. ``s`` of ``<c d^T, P>``, ``P`` the entropic plan for ``C_ij = (s_i - y_j)^2``.

    The implicit VJP of :func:`softk._ot.implicit.plan_vjp` for a rank-one
    cotangent ``V = c d^T`` (the cotangent of every output of this module),
    chained through the cost without forming any n x m array: with
    ``alpha = c * (P d)``, ``beta = d * (P^T c)``, ``w`` the solution of the
    Schur system (:func:`softk._ot.implicit.schur_solve`) and ``u = (alpha - P w) / a``,
    ``dL/dC = P * (u_i + w_j - c_i d_j) / eps``; its rows sum to zero, so
    ``dL/ds_i = -(2 / eps) (u_i (P y)_i + (P (w y))_i - c_i (P (d y))_i)``.
    Matrix products with a few vectors at a time: O(n m) per CG step,
    memory O(n + m) beyond the plan. Returns ``(grad_s, P d)``.
    """
    d = xp.broadcast_to(d, plan.shape[:-2] + plan.shape[-1:])
    yb = xp.broadcast_to(y, d.shape)
    rowv = _times(xp, plan, xp.stack([xp.ones_like(d), d, yb, d * yb], axis=-2))
    a, pd, py, pdy = rowv[..., 0, :], rowv[..., 1, :], rowv[..., 2, :], rowv[..., 3, :]
    alpha = c * pd
    colv = xp.stack([xp.ones_like(c), c, alpha / a], axis=-2) @ plan
    b, ptc, pta = colv[..., 0, :], colv[..., 1, :], colv[..., 2, :]
    rhs = d * ptc - pta
    w = schur_solve(xp, plan, a, b, rhs, method=method, cg_tol=cg_tol)
    roww = _times(xp, plan, xp.stack([w, w * yb], axis=-2))
    u = (alpha - roww[..., 0, :]) / a
    return -(2.0 / epsilon) * (u * py + roww[..., 1, :] - c * pdy), pd


def _backward(
    xp, arrays, residuals, cotangent, *, kind, m, quantiles, width, descending, scalar, epsilon, axis, method, tol, max_iter
):
    (x,) = arrays
    (plan,) = residuals
    rows = to_rows(xp, x, axis)
    v = to_rows(xp, xp.expand_dims(cotangent, axis=axis) if scalar else cotangent, axis)
    n = rows.shape[-1]
    s, z, std, y, _, _, b, _ = _problem(xp, rows, n, m, quantiles, width)
    if kind == "rank":
        c, d = n * v, n * xp.cumulative_sum(b)
    else:
        if kind == "quantile":  # scatter into the odd (quantile) targets
            zeros = xp.zeros_like(v)
            v = xp.concat([xp.reshape(xp.stack([zeros, v], axis=-1), (*v.shape[:-1], -1)), zeros[..., :1]], axis=-1)
        elif descending:
            v = xp.flip(v, axis=-1)
        c, d = rows, v / b
    cg_tol = 1e-10 if xp.finfo(plan.dtype).bits > 32 else 1e-5
    grad_s, pd = outer_plan_vjp(xp, plan, c, d, s, y, epsilon, method=schur_method(plan.shape[-1]), cg_tol=cg_tol)
    grad = _squash_vjp(xp, s, z, std, grad_s)
    if kind != "rank":  # sort and quantiles: x enters P^T x directly too
        grad = grad + pd
    return (from_rows(xp, grad, axis, x.dtype),)


# one forward and backward (``kind`` says which), named per public function for the glue's messages
SOFT_SORT, SOFT_RANK, SOFT_QUANTILE = (CoreOp(name, _forward, _backward) for name in ("soft_sort", "soft_rank", "soft_quantile"))


def _prepare(x: Any, kind: str, m: Any, epsilon: Any, axis: Any, method: str, tol: Any, max_iter: Any, **extra: Any) -> tuple:
    """Validate the arguments shared by the three operators; ``extra``: quantile levels etc."""
    xp = namespace_of(x=x)
    axis = check_axis(axis, x.ndim)
    check_nonempty(x)
    n = x.shape[axis]
    if n is None or n < 2:
        raise ValueError(f"x must have at least 2 entries along axis {axis}, got {n}")
    m = n if m is None else check_int("m", m, 2, 10**7)
    params = dict(kind=kind, m=m, quantiles=(), width=0.0, descending=False, scalar=False)
    params.update(extra)
    n_targets = 2 * len(params["quantiles"]) + 1 if params["quantiles"] else m
    epsilon = check_positive_float("epsilon", epsilon)
    params.update(solver_params(xp, x, method, tol, max_iter, n_targets), epsilon=epsilon, axis=axis)
    check_finite_values(xp, "x", x)
    return (x,), params


_SOLVER_DOC = """epsilon : float
        Entropic regularisation, absolute: the cost ``(s_i - y_j)^2`` lies in [0, 1].
    axis : int
        Axis of the scores; all other axes are batch axes.
    method : {"auto", "newton", "sinkhorn"}
        ``"newton"`` (semi-dual Newton, machine-precision marginals, for few
        targets), ``"sinkhorn"`` (kernel-mode Sinkhorn, log-domain under
        ``jax.jit``), ``"auto"``: Newton for at most 32 targets. Both start from
        the sorted (unregularised) solution. Gradients are implicit (no
        unrolling) either way.
    tol, max_iter : float, int, optional
        Stopping rule. Newton: relative column-marginal error
        ``max_j |(P^T 1)_j / b_j - 1|`` (default 1e-5 in float32, 1e-12 in
        float64), at most 200 steps. Sinkhorn: row-marginal L1 error (default
        1e-6 in float32, 1e-9 in float64), at most 10000 iterations. A
        :class:`softk.NotConvergedWarning` says when ``max_iter`` is hit."""


@differentiable(SOFT_SORT)
def soft_sort(x: Any, *, epsilon: float = 1e-2, axis: int = -1, m: int | None = None, descending: bool = False,
              method: str = "auto", tol: float | None = None, max_iter: int | None = None) -> Any:
    """Soft sort along ``axis``: ``(P^T x)_j / b_j`` for ``m`` uniform targets.

    Tends to ``sort(x)`` as ``epsilon -> 0`` with ``m = n``; with ``m < n``
    each output is the mean of a block of ``n/m`` consecutive sorted values.

    Parameters
    ----------
    x : array, real floating, finite
    m : int, optional
        Number of targets (default ``n``), ``m >= 2``.
    descending : bool
        Return the values in decreasing order.
    {solver}

    Returns
    -------
    array
        ``x``'s array type, dtype and device; shape of ``x`` with ``axis`` of size ``m``.

    Examples
    --------
    >>> import numpy as np, softk
    >>> softk.soft_sort(np.array([3.0, 1.0, 2.0]), epsilon=1e-4).round(4).tolist()
    [1.0, 2.0, 3.0]
    """
    if not isinstance(descending, bool):
        raise TypeError(f"descending must be a bool, got {descending!r}")
    return _prepare(x, "sort", m, epsilon, axis, method, tol, max_iter, descending=descending)


@differentiable(SOFT_RANK)
def soft_rank(x: Any, *, epsilon: float = 1e-2, axis: int = -1, m: int | None = None,
              method: str = "auto", tol: float | None = None, max_iter: int | None = None) -> Any:
    """Soft ranks along ``axis``: ``r_i = n sum_j P_ij (n B_j)``, ``B = cumsum(b)``.

    1-based: tends to the ranks 1 (smallest) ... n (largest) as ``epsilon -> 0``
    with ``m = n``; with ``m < n`` the ranks come in steps of ``n/m``. (OTT-JAX's
    ``soft_sort.ranks`` is 0-based: for ``m = n`` it is this minus one.)

    Parameters
    ----------
    x : array, real floating, finite
    m : int, optional
        Number of uniform targets (default ``n``), ``m >= 2``.
    {solver}

    Returns
    -------
    array
        Same shape, array type, dtype and device as ``x``.

    Examples
    --------
    >>> import numpy as np, softk
    >>> softk.soft_rank(np.array([3.0, 1.0, 2.0]), epsilon=1e-4).round(4).tolist()
    [3.0, 1.0, 2.0]
    """
    return _prepare(x, "rank", m, epsilon, axis, method, tol, max_iter)


@differentiable(SOFT_QUANTILE)
def soft_quantile(x: Any, q: Any, *, epsilon: float = 1e-2, axis: int = -1, width: float | None = None,
                  method: str = "auto", tol: float | None = None, max_iter: int | None = None) -> Any:
    """Soft quantiles at levels ``q`` along ``axis``: ``(P^T x)_j / w`` at the targets of mass ``w``.

    With sorted levels ``q_1 < ... < q_K`` the ``2K + 1`` targets weigh
    ``[q_1 - w/2, w, q_2 - q_1 - w, ..., w, 1 - q_K - w/2]``; each output is a
    weighted mean of about ``w n`` order statistics around ``q_k n``.

    Parameters
    ----------
    x : array, real floating, finite
    q : float or sequence of floats
        Levels in (0, 1), strictly increasing. Static (Python floats).
    width : float, optional
        Target mass ``w`` per quantile; default (OTT-JAX's rule)
        ``min(0.5 / K, half the smallest gap in [0, q, 1], 0.02, 1.5 / n)``.
    {solver}

    Returns
    -------
    array
        ``x``'s array type, dtype and device; ``axis`` removed for a scalar
        ``q``, else of size ``K``.

    Examples
    --------
    >>> import numpy as np, softk
    >>> x = np.arange(101.0)
    >>> float(softk.soft_quantile(x, 0.5, epsilon=1e-5).round(3))
    50.0
    """
    scalar = not isinstance(q, (tuple, list))
    levels = (q,) if scalar else tuple(q)
    if not levels:
        raise ValueError("q must hold at least one level")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.0 < float(level) < 1.0:
            raise ValueError(f"q must hold floats in (0, 1) (static Python numbers), got {level!r}")
    levels = tuple(float(level) for level in levels)
    if any(hi <= lo for lo, hi in zip(levels, levels[1:])):
        raise ValueError(f"q must be strictly increasing, got {levels}")
    n = x.shape[check_axis(axis, x.ndim)] if hasattr(x, "shape") and hasattr(x, "ndim") else None
    gaps = [hi - lo for lo, hi in zip((0.0, *levels), (*levels, 1.0))]
    limit = min(0.5 / len(levels), 0.5 * min(gaps))
    if width is None:
        width = min(limit, 0.02, 1.5 / n if n else 0.02)
    else:
        width = check_positive_float("width", width)
        if width >= 2 * limit:
            raise ValueError(f"width must be < {2 * limit} (the gaps between levels), got {width}")
    return _prepare(x, "quantile", None, epsilon, axis, method, tol, max_iter, quantiles=levels, width=width, scalar=scalar)


for _fn in (soft_sort, soft_rank, soft_quantile):
    _fn.__doc__ = (_fn.__doc__ or "").replace("{solver}", _SOLVER_DOC)
