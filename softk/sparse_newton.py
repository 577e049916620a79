"""Semismooth Newton for sparsity-constrained OT: the dual and semi-dual, batched.

Both objectives are concave and piecewise quadratic (docs/sparse_ot.md);
they have kinks where the k-th and (k+1)-th candidates of a column tie with
positive mass, which is where the cardinality constraint binds.
With the cost transposed, ``ct = C^T`` of shape ``(..., m, n)``, each column
``j`` of the plan lives on its top-k support ``S_j`` (``idx`` of shape
``(..., m, k)``) and the generalised Hessian is sparse:

* semi-dual in ``alpha`` (n): ``-H = (1/gamma) sum_j (D_j - w_j w_j^T / |S_j|)``,
  ``w_j`` the indicator of the positive entries of column ``j``;
* dual in ``(alpha, beta)`` (n + m): ``-H = (1/gamma) [[diag(r), B], [B^T, diag(c)]]``,
  ``B_ij = 1`` where ``P_ij > 0``, ``r, c`` its row and column counts.

Each step solves ``(-H + mu I) d = grad`` by Jacobi-preconditioned conjugate
gradients (matrix-free: O(m k + n) per product, through :class:`Support`), with
a Levenberg damping ``mu`` proportional to the marginal error, then an Armijo
backtracking line search. Newton identifies the pieces fast where the
maximiser is smooth; near a kink it stalls, and L-BFGS
(:func:`softk.sparse_lbfgs.lbfgs`) takes over. Loops go through :func:`softk._dispatch.while_loop`, so the solver runs
under ``jax.jit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from ._dispatch import while_loop
from .sparse_lbfgs import PROGRESS, STALLS, backtrack, lbfgs
from .sparse_projection import simplex_on_sorted, top_indices

__all__ = ["Support", "SparseSolution", "solve", "evaluate"]

CG_MAX = 200
DAMPING = 1e-2  # mu = DAMPING * relative marginal error * mean Hessian diagonal (+ a floor)


class Support:
    """The top-k supports ``idx`` (..., m, k) of the columns, for gathers and row sums.

    ``gather(v)`` is ``v[idx]`` (..., m, k); ``rowsum(t)`` adds ``t`` (..., m, k)
    into the rows ``idx`` (..., n): a stable sort of the indices once, then a
    cumulative sum per product (the array API has no indexed add with repeats).
    """

    def __init__(self, xp: Any, idx: Any, n: int):
        self.xp, self.n = xp, n
        m, k = idx.shape[-2:]
        self.shape = idx.shape
        batch = math.prod(idx.shape[:-2])
        local = xp.reshape(idx, (batch, m * k))
        dev = device(idx)
        offset = xp.reshape(xp.arange(batch, dtype=idx.dtype, device=dev), (batch, 1))
        self.flat = xp.reshape(local + offset * n, (-1,))
        self.order = xp.argsort(local, axis=-1, stable=True)
        ranked = xp.reshape(xp.take_along_axis(local, self.order, axis=-1) + offset * n, (-1,))
        rows = xp.arange(batch * n, dtype=idx.dtype, device=dev)
        ends = xp.searchsorted(ranked, rows, side="right")
        self.ends = xp.reshape(xp.astype(ends, idx.dtype), (batch, n)) - offset * (m * k)

    def gather(self, v: Any) -> Any:
        return self.xp.reshape(self.xp.take(self.xp.reshape(v, (-1,)), self.flat), self.shape)

    def rowsum(self, t: Any) -> Any:
        xp = self.xp
        local = xp.reshape(t, self.order.shape)
        cums = xp.cumulative_sum(xp.take_along_axis(local, self.order, axis=-1), axis=-1, include_initial=True)
        ends = xp.take_along_axis(cums, self.ends, axis=-1)
        starts = xp.concat([xp.zeros_like(ends[:, :1]), ends[:, :-1]], axis=-1)
        return xp.reshape(ends - starts, (*self.shape[:-2], self.n))


@dataclass(frozen=True)
class SparseSolution:
    """The solver's output. ``alpha`` (..., n), ``beta`` (..., m; zeros for the semi-dual),
    ``mass`` (..., m, k) the plan's entries at ``idx`` (column ``j``, rows ``idx[j]``),
    ``objective`` (...,), worst relative marginal ``error``, ``n_iter``, ``converged``
    (marginals within ``tol``) and ``stationary`` (converged, or no ascent left: the
    maximiser is a kink of the objective, where the cardinality constraint binds)."""

    alpha: Any
    beta: Any
    mass: Any
    idx: Any
    objective: Any
    error: Any
    n_iter: Any
    converged: Any
    stationary: Any


def evaluate(xp: Any, ct: Any, a: Any, b: Any, x: Any, gamma: Any, k: int, dual: bool) -> tuple:
    """Objective, gradient and Newton data at ``x`` (``alpha`` or ``concat(alpha, beta)``).

    Returns ``(F, grad, mass, idx, weight)``: ``weight`` (..., m, k) is 1 on the
    positive plan entries, 0 elsewhere. ``gamma`` has shape ``ct.shape[:-2]``."""
    n = ct.shape[-1]
    g = gamma[..., None]
    if dual:
        alpha, beta = x[..., :n], x[..., n:]
        vals, idx = top_indices(xp, alpha[..., None, :] + beta[..., :, None] - ct, k)
        pos = xp.clip(vals, min=0.0)
        mass = pos / g[..., None]
        objective = xp.sum(alpha * a, axis=-1) + xp.sum(beta * b, axis=-1) - xp.sum(pos * pos, axis=(-2, -1)) / (2.0 * gamma)
        weight = xp.astype(vals > 0.0, ct.dtype)
        grad = xp.concat([a - Support(xp, idx, n).rowsum(mass), b - xp.sum(mass, axis=-1)], axis=-1)
        return objective, grad, mass, idx, weight
    scale = g * b  # gamma b_j
    vals, idx = top_indices(xp, x[..., None, :] - ct, k)  # the positive scale keeps each column's order
    vals = vals / scale[..., None]
    p = simplex_on_sorted(xp, vals)
    mass = b[..., None] * p
    inner = scale * (xp.sum(p * vals, axis=-1) - 0.5 * xp.sum(p * p, axis=-1))
    objective = xp.sum(x * a, axis=-1) - xp.sum(b * inner, axis=-1)
    weight = xp.astype(p > 0.0, ct.dtype)
    return objective, a - Support(xp, idx, n).rowsum(mass), mass, idx, weight


def hessian_products(xp: Any, support: Support, weight: Any, dual: bool, n: int) -> tuple:
    """``(matvec, diagonal)`` of ``-gamma H`` (the ``1/gamma`` is applied by the caller)."""
    if dual:
        def dual_matvec(v: Any) -> Any:
            t = weight * (support.gather(v[..., :n]) + v[..., n:, None])
            return xp.concat([support.rowsum(t), xp.sum(t, axis=-1)], axis=-1)

        return dual_matvec, xp.concat([support.rowsum(weight), xp.sum(weight, axis=-1)], axis=-1)
    size = xp.maximum(xp.sum(weight, axis=-1, keepdims=True), xp.ones_like(weight[..., :1]))

    def matvec(v: Any) -> Any:
        gv = support.gather(v)
        mean = xp.sum(weight * gv, axis=-1, keepdims=True) / size
        return support.rowsum(weight * (gv - mean))

    return matvec, support.rowsum(weight * (1.0 - 1.0 / size))


def conjugate_gradients(xp: Any, matvec: Any, diag: Any, rhs: Any, mu: Any, rtol: Any) -> Any:
    """Solve ``(A + mu I) d = rhs`` per batch entry (A symmetric PSD), Jacobi-preconditioned."""
    precond = 1.0 / (diag + mu[..., None])

    def dot(u: Any, v: Any) -> Any:
        return xp.sum(u * v, axis=-1)

    bound = rtol * xp.sqrt(dot(rhs, rhs))
    x0 = xp.zeros_like(rhs)
    z0 = precond * rhs
    state = (xp.asarray(0, device=device(rhs)), x0, rhs, z0, z0, dot(rhs, z0))

    def cond(state: tuple) -> Any:
        it, _, r, *_ = state
        return xp.logical_and(it < CG_MAX, xp.any(xp.sqrt(dot(r, r)) > bound))

    def body(state: tuple) -> tuple:
        it, x, r, z, p, rz = state
        active = xp.sqrt(dot(r, r)) > bound
        q = matvec(p) + mu[..., None] * p
        pq = dot(p, q)
        step = xp.where(active, rz / xp.where(pq > 0, pq, xp.ones_like(pq)), xp.zeros_like(pq))
        x = x + step[..., None] * p
        r = r - step[..., None] * q
        z = precond * r
        rz_new = dot(r, z)
        beta = xp.where(active, rz_new / xp.where(rz > 0, rz, xp.ones_like(rz)), xp.zeros_like(rz))
        return it + 1, x, r, z, z + beta[..., None] * p, rz_new

    return while_loop(xp, cond, body, state)[1]


def solve(xp: Any, ct: Any, a: Any, b: Any, *, k: int, gamma: float, dual: bool, tol: float, max_iter: int, start: Any = None) -> SparseSolution:
    """Maximise the (semi-)dual for the transposed cost ``ct`` (..., m, n).

    The semi-dual starts from ``start`` (..., n) (zeros if None). The dual starts from the semi-dual's
    solution, with ``beta_j = mean_{S_j}(gamma P_ij - alpha_i + C_ij)``: the two
    plans coincide there (the dual's plan is then feasible, its gradient zero,
    wherever it is differentiable), and dual Newton steps finish the job.

    Stops when the relative marginal error ``max_i |(P 1)_i / a_i - 1|`` (and the
    columns' for the dual) is ``<= tol`` for every batch entry, or after
    ``max_iter`` steps in all. Newton hands over to L-BFGS after ``STALLS`` steps
    in a row that cut the marginal error by less than 1%, or by less than half
    while raising the objective by less than ``PROGRESS`` (relative) (near a kink
    of the objective, where the cardinality constraint binds, or in a long
    combinatorial phase); L-BFGS stops after ``STALLS`` steps in a row that raise
    the objective by less than ``PROGRESS`` (relative): near a kink, where the
    plan read off the dual cannot meet the marginals, grinding on buys little
    (``stationary`` is then True with ``converged`` False, and
    :mod:`softk.sparse_repair` repairs the plan).
    """
    dtype, dev = ct.dtype, device(ct)
    m, n = ct.shape[-2:]
    batch = ct.shape[:-2]
    a = xp.broadcast_to(a, (*batch, n))
    b = xp.broadcast_to(b, (*batch, m))
    marg = xp.concat([a, b], axis=-1) if dual else a
    slack = 16.0 * float(xp.finfo(dtype).eps)
    gam = xp.full(batch, gamma, dtype=dtype, device=dev)

    def at(x: Any) -> tuple:
        return evaluate(xp, ct, a, b, x, gam, k, dual)

    def error(grad: Any) -> Any:
        return xp.max(xp.abs(grad) / marg, axis=-1)

    def newton_step(x: Any, current: tuple, stalls: Any) -> tuple:
        f0, grad, _, idx, weight = current
        err = error(grad)
        finished = stopped(err, stalls)
        matvec, diag = hessian_products(xp, Support(xp, idx, n), weight, dual, n)
        mu = (DAMPING * xp.minimum(err, xp.ones_like(err)) + slack) * xp.maximum(xp.mean(diag, axis=-1), xp.ones_like(err))
        rtol = xp.minimum(xp.full_like(err, 0.1), xp.sqrt(err))
        d = gamma * conjugate_gradients(xp, matvec, diag, grad, mu, rtol)
        d = xp.where(finished[..., None], xp.zeros_like(d), d)
        slope = xp.sum(grad * d, axis=-1)
        floor = f0 - slack * (xp.abs(f0) + 1.0)

        t, found = backtrack(xp, at, x, d, current, finished, slope, floor)
        # slow (L-BFGS takes over): the marginal error did not drop by 1%, or it dropped by less than
        # half for a rise of the objective below PROGRESS (a kink or a long combinatorial phase)
        new_err = error(found[1])
        creeping = xp.logical_and(new_err >= 0.5 * err, found[0] - f0 <= PROGRESS * (xp.abs(f0) + slack))
        flat = xp.logical_or(new_err >= 0.99 * err, creeping)
        stalls = xp.where(flat, stalls + 1, xp.zeros_like(stalls))
        return x + t[..., None] * d, found, stalls

    def stopped(err: Any, stalls: Any) -> Any:
        return xp.logical_or(err <= tol, stalls >= STALLS)

    def cond(state: tuple) -> Any:
        it, _, current, stalls = state
        return xp.logical_and(it < max_iter, xp.logical_not(xp.all(stopped(error(current[1]), stalls))))

    def body(state: tuple) -> tuple:
        it, x, current, stalls = state
        x, current, stalls = newton_step(x, current, stalls)
        return it + 1, x, current, stalls

    x0 = xp.zeros((*batch, n), dtype=dtype, device=dev) if start is None else start
    it0 = xp.asarray(0, device=dev)
    if dual:
        first = solve(xp, ct, a, b, k=k, gamma=gamma, dual=False, tol=tol, max_iter=max_iter, start=start)
        weight = xp.astype(first.mass > 0.0, dtype)
        gap = gamma * first.mass - Support(xp, first.idx, n).gather(first.alpha) + xp.take_along_axis(ct, first.idx, axis=-1)
        beta = xp.sum(weight * gap, axis=-1) / xp.maximum(xp.sum(weight, axis=-1), xp.ones_like(gap[..., 0]))
        x0 = xp.concat([first.alpha, beta], axis=-1)
        it0 = first.n_iter
    stalls = xp.zeros(batch, dtype=xp.int32, device=dev)
    it, x, current, stalls = while_loop(xp, cond, body, (it0, x0, at(x0), stalls))
    # a kink: Newton's piecewise model gives no ascent there; quasi-Newton steps go on
    it, x, current, stalls = lbfgs(xp, at, error, it, x, current, tol, max_iter, slack)
    objective, grad, mass, idx, _ = current
    err = error(grad)
    alpha = x[..., :n]
    beta = x[..., n:] if dual else None
    worst = xp.max(xp.reshape(err, (-1,)))
    return SparseSolution(alpha, beta, mass, idx, objective, worst, it, xp.all(err <= tol), xp.all(stopped(err, stalls)))
