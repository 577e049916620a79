"""Sparsity-constrained optimal transport (Liu, Puigcerver and Blondel, ICLR 2023).

Primal, per leading batch index (docs/sparse_ot.md)::

    min <P, C> + (gamma / 2) ||P||^2   over P >= 0, P 1 = a, P^T 1 = b,
                                       at most k nonzeros in each column of P.

It is non-convex; its semi-dual (in ``alpha``) and dual (in ``alpha, beta``)
are concave (the duals of its convex relaxation). Three steps:

1. ``alpha`` starts from the Sinkhorn potential of entropic OT at
   ``WARM_EPSILON`` times the cost's range; :mod:`softk.sparse_newton` (then
   :mod:`softk.sparse_lbfgs`) ascends the (semi-)dual until the marginals are
   met or the ascent stalls. The semi-dual at any ``alpha`` is a lower bound
   on the primal optimum: ``dual_value``.
2. The plan is read off the dual variables: column ``j`` is ``b_j`` times the
   k-sparse simplex projection (:mod:`softk.sparse_projection`) of
   ``(alpha - C[:, j]) / (gamma b_j)`` (semi-dual), or the top-k part of
   ``[alpha + beta_j - C[:, j]]_+ / gamma`` (dual): at most ``k`` nonzeros per
   column exactly.
3. Where that plan misses ``tol`` (the constraint binds: the dual's maximiser
   is a kink), :mod:`softk.sparse_repair` moves mass on a candidate graph into
   a plan that meets the marginals with at most ``k`` nonzeros per column;
   ``gap`` is the plan's objective minus ``dual_value``.

The warm start and the repair read values, so they run on the host through
:func:`softk._dispatch.host_call`: directly on NumPy, PyTorch, CuPy; under
JAX (eager, ``jit``, ``vmap``, ``grad``) as a ``jax.pure_callback`` on NumPy
copies (the warm start is NumPy's Sinkhorn then, so every backend takes the
same steps; on an accelerator each callback is a device-to-host round trip);
under ``torch.compile`` as a graph break (``fullgraph=True`` refuses it).
Only where the values cannot be read and there is no host call is the plan
the dual readout as it is.

``k = 1`` is unregularised OT where a one-sparse plan exists, ``k = n``
quadratically regularised OT. Gradients (:mod:`softk.sparse_ops`) never go
through the iterations: those of the quadratic problem restricted to the
returned plan's support (envelope theorem for the objective, implicit
differentiation for the plan).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace, device

from ._dispatch import glue_for, host_call, values_known
from ._op import CoreOp, differentiable, pytree
from ._validate import check_choice, check_finite_values, check_int, check_positive_float, namespace_of
from ._warnings import NotConvergedWarning
from .sparse_newton import Support, evaluate, solve
from .sparse_ops import FIXED_PLAN, FIXED_VALUE, dense, stop_gradient
from .sparse_repair import repaired

__all__ = ["sparse_ot", "SparseOTResult", "MarginalGapWarning", "sparse_ot_value", "sparse_ot_plan"]

FORMULATIONS = ("semi-dual", "dual")
WARM_EPSILON = 1e-3  # entropic warm start, relative to the cost's range


@pytree()
@dataclass(frozen=True)
class SparseOTResult:
    """Result of :func:`sparse_ot`; a pytree (``jax.jit``, ``jax.vmap`` return it as it is).

    Attributes
    ----------
    plan : array (..., n, m)
        At most ``k`` nonzeros per column; differentiable in ``cost, a, b``.
    alpha, beta : arrays (..., n), (..., m)
        Dual variables (no gradient): those of the dual solve where its plan met ``tol``
        (for the semi-dual ``beta`` is the equivalent dual variable); for a repaired plan,
        those of the quadratic problem on its support (``alpha_i + beta_j = C_ij + gamma P_ij``
        along a spanning forest of it).
    objective : array (...,)
        The primal objective ``<P, C> + (gamma / 2) ||P||^2`` of ``plan``; differentiable
        (``d objective / dC = plan``, ``d / da = alpha``, ``d / db = beta``).
    dual_value : array (...,)
        The semi-dual at the returned ``alpha`` of the dual solve: a certified lower bound
        on the optimum of the (non-convex) problem, whatever the solver's progress.
    gap : array (...,)
        ``objective - dual_value``: how far, at most, the returned plan is from optimal
        (when it meets the marginals).
    error : 0-d array
        Marginal violation of ``plan``: ``||P 1 - a||_1 + ||P^T 1 - b||_1``, worst over the batch.
    n_iter : 0-d array
        Newton and L-BFGS steps of the dual solve.
    converged : 0-d bool array
        Whether the returned plan meets the marginals to ``tol`` (relative, per entry).
        If the repair finds no such plan, a :class:`MarginalGapWarning` says so (at run
        time under ``jax.jit``).
    """

    plan: Any
    alpha: Any
    beta: Any
    objective: Any
    dual_value: Any
    gap: Any
    error: Any
    n_iter: Any
    converged: Any


def _solve(xp, cost, a, b, *, k, gamma, formulation, tol, max_iter):
    """Solve; ``(packed, mass, idx)``: ``packed`` holds ``alpha, beta``, the dual value, ``n_iter``
    and whether the plan met ``tol`` along the last axis; the plan read off the solution has
    entries ``mass`` (..., m, k) at rows ``idx``."""
    ct = xp.matrix_transpose(cost)
    n = cost.shape[-2]
    dual = formulation == "dual"
    start = host_call(xp, _host_warm_start, (((*cost.shape[:-2], n), cost.dtype),), cost, a, b)
    start = _warm_start(xp, cost, a, b) if start is None else start[0]
    sol = solve(xp, ct, a, b, k=k, gamma=gamma, dual=dual, tol=tol, max_iter=max_iter, start=start)
    beta = sol.beta if dual else _semidual_beta(xp, ct, sol.alpha, sol.mass, sol.idx, gamma)
    flags = xp.stack([xp.astype(f, cost.dtype) for f in (sol.n_iter, sol.converged)])
    lower = sol.objective  # the semi-dual at any alpha bounds the primal below
    if dual:
        gam = xp.full(cost.shape[:-2], gamma, dtype=cost.dtype, device=device(cost))
        lower = evaluate(xp, ct, a, b, sol.alpha, gam, k, False)[0]
    packed = xp.concat([sol.alpha, beta, lower[..., None], xp.broadcast_to(flags, (*cost.shape[:-2], 2))], axis=-1)
    return packed, sol.mass, sol.idx


def _warm_start(xp, cost, a, b):
    """``alpha`` from entropic OT at ``WARM_EPSILON`` times the cost's range (the Sinkhorn potential ``f``)."""
    import softk  # the public Sinkhorn entry point (softk imports this module's package)

    span = xp.max(cost, axis=(-2, -1), keepdims=True) - xp.min(cost, axis=(-2, -1), keepdims=True)
    span = xp.where(span > 0.0, span, xp.ones_like(span))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)  # a warm start only
        f = softk.sinkhorn(cost / span, a=a, b=b, epsilon=WARM_EPSILON, tol=1e-2, max_iter=5000).f
    return xp.where(xp.isfinite(f), f * span[..., 0], xp.zeros_like(f))  # any start is valid


def _host_warm_start(cost, a, b):
    """:func:`_warm_start` on the host (under JAX, NumPy's eager Sinkhorn solver): the same start,
    and so the same ascent and plan, on every backend, traced or not."""
    return (_warm_start(array_namespace(cost, a, b), cost, a, b),)


def _semidual_beta(xp, ct, alpha, mass, idx, gamma):
    """``beta_j = mean over the support of (gamma P_ij - alpha_i + C_ij)`` (= ``-gamma b_j tau_j``)."""
    weight = xp.astype(mass > 0.0, mass.dtype)
    gap = gamma * mass - Support(xp, idx, alpha.shape[-1]).gather(alpha) + xp.take_along_axis(ct, idx, axis=-1)
    return xp.sum(weight * gap, axis=-1) / xp.maximum(xp.sum(weight, axis=-1), xp.ones_like(gap[..., 0]))


SOLVE = CoreOp("sparse_ot_solve", lambda xp, *arrays, **params: (_solve(xp, *arrays, **params), ()), stop_gradient, n_out=3)


def _found(xp, cost, a, b, solved, *, k, gamma, **_):
    """``(mass, idx, duals)`` of the returned plan: the readout of the dual solve ``solved``
    (:func:`_solve`; ``duals = (alpha, beta)``), repaired on the host where it misses ``tol``."""
    packed, mass, idx = solved
    read = (mass, idx, packed[..., : sum(cost.shape[-2:])])
    found = host_call(xp, functools.partial(_repair_missed, k=k, gamma=gamma), tuple((r.shape, r.dtype) for r in read), cost, a, b, packed, *read)
    return read if found is None else found  # None: no host call possible


def _repair_missed(cost, a, b, packed, *read, k, gamma):
    """On the host: the readout ``read`` where the solve met ``tol`` (a flag for the whole batch),
    else :func:`repaired`."""
    xp = array_namespace(cost, packed)
    if bool(xp.reshape(packed[..., -1], (-1,))[0] > 0.5):
        return read
    return repaired(xp, cost, a, b, packed[..., : cost.shape[-2]], k, gamma)


def _solving(name: str, fixed: CoreOp) -> CoreOp:
    """``fixed`` on the returned plan with the solve and repair in front, for :func:`softk.vjp`
    (one op, gradients for every array)."""

    def forward(xp, cost, a, b, **params):
        found = _found(xp, cost, a, b, _solve(xp, cost, a, b, **params), **params)
        _check(xp, cost, a, b, found[0], found[1], params["tol"])
        out, residuals = fixed.forward(xp, cost, a, b, *found, **params)
        return out, (*found, *residuals)

    def backward(xp, arrays, residuals, cotangent, **params):
        return fixed.backward(xp, (*arrays, *residuals[:3]), residuals[3:], cotangent, **params)[:3]

    return CoreOp(name, forward, backward)


VALUE = _solving("sparse_ot_value", FIXED_VALUE)
PLAN = _solving("sparse_ot_plan", FIXED_PLAN)


class MarginalGapWarning(RuntimeWarning):
    """:func:`sparse_ot` returns a plan that violates the marginals (by ``error``): the repair
    found no feasible plan with at most ``k`` nonzeros per column on its candidate graph."""


def sparse_ot(cost: Any, a: Any = None, b: Any = None, *, k: int, gamma: float, formulation: str = "semi-dual", tol: float | None = None, max_iter: int = 1000) -> SparseOTResult:
    """Optimal transport with quadratic regularisation and at most ``k`` nonzeros per column.

    ``min <P, C> + (gamma / 2) ||P||^2`` over couplings of ``a`` and ``b`` whose
    columns have at most ``k`` nonzeros, through its concave ``formulation``
    (``"semi-dual"`` in ``alpha``, columns exact; or ``"dual"`` in ``alpha, beta``),
    maximised by semismooth Newton from a Sinkhorn warm start, then, where the
    constraint binds, a primal repair (module docstring); ``gap`` bounds how far
    the returned plan is from optimal.

    Parameters
    ----------
    cost : array (..., n, m)
        Cost matrix; leading dimensions are batch dimensions.
    a, b : arrays (..., n), (..., m), optional
        Positive marginals with equal totals (not renormalised); uniform ``1/n``, ``1/m`` when omitted.
    k : int
        Nonzeros allowed per column, ``1 <= k <= n``.
    gamma : float
        Regularisation (> 0), as POT's ``reg``.
    formulation : {"semi-dual", "dual"}
    tol : float, optional
        Stop when ``max_i |(P 1)_i - a_i| / a_i <= tol`` (and the columns' for the dual);
        default 1e-9 in float64, 1e-4 in float32.
    max_iter : int
        Steps of the dual solve (it stops earlier once its ascent stalls); the repair
        makes the plan feasible wherever they stop.

    Returns
    -------
    SparseOTResult

    Examples
    --------
    >>> import numpy as np
    >>> from softk.sparse_ot import sparse_ot
    >>> C = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    >>> r = sparse_ot(C, k=1, gamma=0.1)
    >>> (r.plan * 3).round(6).tolist(), bool(r.converged)
    ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], True)
    """
    arrays, params = _prepare(cost, a, b, k, gamma, formulation, tol, max_iter)
    xp = namespace_of(cost=arrays[0])
    solved = SOLVE.bind(*arrays, **params)
    n, m = arrays[0].shape[-2:]
    lower = solved[0][..., n + m]
    found = _found(xp, arrays[0], arrays[1], arrays[2], solved, **params)
    error, converged = _check(xp, arrays[0], arrays[1], arrays[2], found[0], found[1], params["tol"])
    plan = FIXED_PLAN.bind(*arrays, *found, **params)
    objective = FIXED_VALUE.bind(*arrays, *found, **params)
    return SparseOTResult(
        plan=plan,
        alpha=found[2][..., :n],
        beta=found[2][..., n:],
        objective=objective,
        dual_value=lower,
        gap=objective - lower,
        error=error,
        n_iter=xp.astype(xp.reshape(solved[0][..., n + m + 1], (-1,))[0], xp.int64),
        converged=converged,
    )


def _check(xp, cost, a, b, mass, idx, tol):
    """``(error, converged)`` of the returned plan; a :class:`MarginalGapWarning` if it misses ``tol``."""
    plan = dense(xp, mass, idx, cost.shape[-2])
    rows, cols = xp.sum(plan, axis=-1) - a, xp.sum(plan, axis=-2) - b
    l1 = xp.max(xp.reshape(xp.sum(xp.abs(rows), axis=-1) + xp.sum(xp.abs(cols), axis=-1), (-1,)))
    met = xp.maximum(xp.max(xp.abs(rows) / a), xp.max(xp.abs(cols) / b)) <= tol
    glue_for(xp).on_false(met, _gap)
    return l1, met


def _gap():
    warnings.warn(
        "sparse_ot: the primal repair found no plan with at most k nonzeros per column that meets "
        "the marginals on the candidate graph (with more rows than columns such a plan may not exist: "
        "see docs/sparse_ot.md); the plan misses them by result.error",
        MarginalGapWarning,
        stacklevel=5,
    )


@differentiable(VALUE)
def sparse_ot_value(cost, a=None, b=None, *, k, gamma, formulation="semi-dual", tol=None, max_iter=1000):
    """The objective alone, ``sparse_ot(...).objective`` as one operator (for :func:`softk.vjp`).

    The pullback returns gradients for ``cost, a, b`` (``P``, ``alpha``, ``beta`` times the cotangent).

    >>> import numpy as np, softk
    >>> from softk.sparse_ot import sparse_ot_value
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> value, pullback = softk.vjp(sparse_ot_value, C, k=1, gamma=0.1)
    >>> pullback(np.ones(()))[0].round(6).tolist()   # dF/dC = P
    [[0.5, 0.0], [0.0, 0.5]]
    """
    return _prepare(cost, a, b, k, gamma, formulation, tol, max_iter)


@differentiable(PLAN)
def sparse_ot_plan(cost, a=None, b=None, *, k, gamma, formulation="semi-dual", tol=None, max_iter=1000):
    """The plan alone, ``sparse_ot(...).plan`` as one operator (for :func:`softk.vjp`).

    >>> import numpy as np
    >>> from softk.sparse_ot import sparse_ot_plan
    >>> sparse_ot_plan(np.array([[0.0, 1.0], [1.0, 0.0]]), k=2, gamma=0.1).round(6).tolist()
    [[0.5, 0.0], [0.0, 0.5]]
    """
    return _prepare(cost, a, b, k, gamma, formulation, tol, max_iter)


def _prepare(cost, a, b, k, gamma, formulation, tol, max_iter):
    """Validate; return ``((cost, a, b), params)`` with the default weights formed."""
    weights = {name: w for name, w in (("a", a), ("b", b)) if w is not None}
    xp = namespace_of(cost=cost, **weights)
    if cost.ndim < 2:
        raise ValueError(f"cost must have shape (..., n, m), got {tuple(cost.shape)}")
    n, m = cost.shape[-2:]
    if n < 1 or m < 1:
        raise ValueError(f"cost must have at least one row and one column, got shape {tuple(cost.shape)}")
    check_finite_values(xp, "cost", cost)
    dtype, dev = cost.dtype, device(cost)
    batch = cost.shape[:-2]
    out = []
    for name, w, size in (("a", a, n), ("b", b, m)):
        if w is None:
            w = xp.full((size,), 1.0 / size, dtype=dtype, device=dev)
        elif w.ndim < 1 or w.shape[-1] != size:
            raise ValueError(f"{name} must have shape (..., {size}) to match the cost, got {tuple(w.shape)}")
        else:
            check_finite_values(xp, name, w)
            if w.dtype != dtype:
                raise TypeError(f"{name} must have the cost's dtype {dtype}, got {w.dtype}")
            if values_known(xp, w) and not bool(xp.all(w > 0)):
                raise ValueError(f"{name} must be positive (drop points with zero weight)")
        out.append(xp.broadcast_to(w, (*batch, size)))
    a, b = out
    if values_known(xp, a) and values_known(xp, b):
        ta, tb = xp.sum(a, axis=-1), xp.sum(b, axis=-1)
        if bool(xp.any(xp.abs(ta - tb) > 1e-6 * xp.abs(ta))):
            raise ValueError("a and b must have equal totals (sum(a) == sum(b)): the plan would be infeasible")
    if tol is None:
        tol = 1e-4 if xp.finfo(dtype).bits <= 32 else 1e-9
    params = dict(
        k=check_int("k", k, 1, n),
        gamma=check_positive_float("gamma", gamma),
        formulation=check_choice("formulation", formulation, FORMULATIONS),
        tol=check_positive_float("tol", tol),
        max_iter=check_int("max_iter", max_iter, 1, 10**9),
    )
    return (cost, a, b), params
