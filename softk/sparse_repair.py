"""Primal repair for sparsity-constrained OT: a feasible plan with at most k nonzeros per column.

Where the cardinality constraint binds, the concave (semi-)dual of
:mod:`softk.sparse_ot` is maximised at a kink, and the plan read off it
(``b_j`` times the k-sparse simplex projection of ``(alpha - C[:, j]) / (gamma b_j)``,
exact columns, at most ``k`` nonzeros each) misses the row marginals. The
repair moves mass on the candidate graph (rows, columns, and an edge from each
column to its ``k + 2`` best rows under ``alpha``) until the rows are met too:

* a row ``i`` with excess sends it along an alternating path ``i -> j -> i' -> j' -> ...``
  (less on a positive entry ``(i, j)``, more on an entry ``(i', j)`` of the same
  column) to a row in deficit, found breadth first; the amount is the smallest
  of the excess, the deficit and the entries lowered, so columns stay exact and
  some entry, excess or deficit reaches zero. A zero entry may be raised only in
  a column with fewer than ``k`` nonzeros; where no such path exists, one
  without that rule is taken and the column is then trimmed;
* a column left with more than ``k`` nonzeros moves one entry onto another of
  the same column, and the rows it unbalances are repaired along paths that keep
  the rule (an attempt that fails is undone);
* :func:`polish` then minimises the objective over plans on the support found
  (flows around its cycles), so the plan solves the quadratic problem restricted
  to its support.

This is a small graph algorithm on O(k m) edges, run on host lists per batch
entry (:func:`softk.sparse_ot.sparse_ot` calls it through
:func:`softk._dispatch.host_call`: a ``jax.pure_callback`` under JAX, so it
runs under ``jit``, ``vmap`` and ``grad`` too). :func:`tree_duals` gives dual variables of the repaired
plan on its support (``alpha_i + beta_j = C_ij + gamma P_ij`` along a spanning
forest of it, and after the polish on every entry), used for the gradients in
the weights.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from array_api_compat import device

from .sparse_projection import simplex_on_sorted, top_indices

__all__ = ["repaired", "repair", "polish", "tree_duals", "host_list"]


def repaired(xp: Any, cost: Any, a: Any, b: Any, alpha: Any, k: int, gamma: float) -> tuple:
    """The repaired plan from the semi-dual readout at ``alpha`` (..., n), per batch entry.

    Returns ``(mass, idx, duals)``: ``mass`` (..., m, k) the plan's entries at rows
    ``idx`` (..., m, k) of each column (zeros in unused slots), ``duals`` (..., n + m)
    from :func:`tree_duals`.
    """
    n, m = cost.shape[-2:]
    batch = cost.shape[:-2]
    dtype, dev = cost.dtype, device(cost)
    ct = xp.matrix_transpose(cost)
    a, b = xp.broadcast_to(a, (*batch, n)), xp.broadcast_to(b, (*batch, m))
    width = min(n, k + 2)
    vals, idx = top_indices(xp, alpha[..., None, :] - ct, width)
    mass = b[..., None] * simplex_on_sorted(xp, vals[..., :k] / (gamma * b[..., None]))
    mass = xp.concat([mass, xp.zeros((*batch, m, width - k), dtype=dtype, device=dev)], axis=-1)
    size = math.prod(batch)
    host = [host_list(xp.reshape(t, (size, *t.shape[len(batch) :]))) for t in (idx, mass, xp.take_along_axis(ct, idx, axis=-1), a)]
    out_mass, out_idx, out_duals = [], [], []
    for cand, plan, costs, weights in zip(*host):
        if repair(cand, plan, weights, k):
            polish(cand, plan, costs, n, gamma)
        alpha_t, beta_t = tree_duals(cand, plan, costs, n, gamma)
        slots = [sorted(range(len(col)), key=col.__getitem__, reverse=True) for col in plan]  # largest first
        out_mass.append([[col[s] for s in order[:k]] for col, order in zip(plan, slots)])
        out_idx.append([[rows[s] for s in order[:k]] for rows, order in zip(cand, slots)])
        out_duals.append(alpha_t + beta_t)
    return (
        xp.reshape(xp.asarray(out_mass, dtype=dtype, device=dev), (*batch, m, k)),
        xp.reshape(xp.asarray(out_idx, dtype=idx.dtype, device=dev), (*batch, m, k)),
        xp.reshape(xp.asarray(out_duals, dtype=dtype, device=dev), (*batch, n + m)),
    )


def host_list(x: Any) -> list:
    """A nested Python list of the values of ``x`` (any eager array library)."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if x.ndim == 0:
        return int(x) if "int" in str(x.dtype) else float(x)  # type: ignore[return-value]
    return [host_list(x[i, ...]) for i in range(x.shape[0])]


class _Flow:
    """The plan on the candidate graph: ``mass[j][s]`` on the edge ``(cand[j][s], j)``.

    Every change goes through :meth:`set` and :meth:`shift`, which keep the column
    counts ``nnz`` and the rows' ``excess`` (sum minus ``a``) and journal the old
    values, so that an attempt can be undone (:meth:`undo`)."""

    def __init__(self, cand: list, mass: list, a: list, k: int):
        self.cand, self.mass, self.k = cand, mass, k
        self.adj: list[list[tuple[int, int]]] = [[] for _ in a]
        for j, rows in enumerate(cand):
            for s, i in enumerate(rows):
                self.adj[i].append((j, s))
        self.nnz = [sum(1 for x in col if x > 0.0) for col in mass]
        self.excess = [-float(ai) for ai in a]
        for rows, col in zip(cand, mass):
            for i, x in zip(rows, col):
                self.excess[i] += x
        self.tol = 1e-11 * max(a)  # above the rounding of column sums, below any tolerance asked
        self.journal: list[tuple[int, int, float, int, float]] = []

    def set(self, j: int, s: int, value: float) -> None:
        i, old = self.cand[j][s], self.mass[j][s]
        self.journal.append((j, s, old, i, self.excess[i]))
        self.nnz[j] += (value > 0.0) - (old > 0.0)
        self.excess[i] += value - old
        self.mass[j][s] = value

    def undo(self, mark: int) -> None:
        while len(self.journal) > mark:
            j, s, old, i, excess = self.journal.pop()
            self.nnz[j] += (old > 0.0) - (self.mass[j][s] > 0.0)
            self.mass[j][s], self.excess[i] = old, excess

    def augment(self, i0: int, strict: bool) -> bool:
        """Send excess from row ``i0`` to a row in deficit along a shortest alternating path."""
        mass, cand, nnz, excess = self.mass, self.cand, self.nnz, self.excess
        prev: dict[int, Any] = {i0: None}
        queue, found = deque([i0]), -1
        while queue and found < 0:
            i = queue.popleft()
            for j, s in self.adj[i]:
                if mass[j][s] <= 0.0:
                    continue
                closed = strict and nnz[j] >= self.k
                for s2, i2 in enumerate(cand[j]):
                    if i2 in prev or (closed and mass[j][s2] <= 0.0):
                        continue
                    prev[i2] = (i, j, s, s2)
                    if excess[i2] < -self.tol:
                        found = i2
                        break
                    queue.append(i2)
                if found >= 0:
                    break
        if found < 0:
            return False
        path, i2 = [], found
        while prev[i2] is not None:
            i, j, s, s2 = prev[i2]
            path.append((j, s, s2))
            i2 = i
        delta = min(excess[i0], -excess[found], *(mass[j][s] for j, s, _ in path))
        for j, s, s2 in path:
            self.set(j, s2, mass[j][s2] + delta)
            self.set(j, s, 0.0 if mass[j][s] <= delta + self.tol else mass[j][s] - delta)  # no rounding dust
        return True

    def fix_rows(self, strict_only: bool) -> bool:
        """Route every row's excess to rows in deficit (strict paths first)."""
        for i0 in range(len(self.excess)):
            while self.excess[i0] > self.tol:
                if not (self.augment(i0, True) or (not strict_only and self.augment(i0, False))):
                    return min(self.excess) >= -self.tol  # else only rounding is left, with no row to take it
        return True

    def trim(self, j: int) -> bool:
        """Bring column ``j`` to ``k`` nonzeros: move one entry onto another of the column and
        route the rows' new excess along strict paths; try the pairs smallest entry first,
        undo an attempt that fails."""
        col = self.mass[j]
        order = sorted((s for s, x in enumerate(col) if x > 0.0), key=col.__getitem__)
        for small in order:
            for big in reversed(order):
                if big == small:
                    continue
                mark = len(self.journal)
                self.set(j, big, col[big] + col[small])
                self.set(j, small, 0.0)
                if self.fix_rows(strict_only=True):
                    return True
                self.undo(mark)
        return False


def repair(cand: list, mass: list, a: list, k: int) -> bool:
    """Repair ``mass`` (in place; ``mass[j][s]`` on row ``cand[j][s]`` of column ``j``, columns
    exact) into a plan whose rows sum to ``a`` with at most ``k`` nonzeros per column.

    Returns whether it succeeded (otherwise ``mass`` is the last, partly repaired, plan).

    >>> cand, mass = [[0, 1, 2], [1, 2, 0]], [[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]
    >>> repair(cand, mass, [1 / 3, 1 / 3, 1 / 3], k=2), [[round(x, 4) for x in c] for c in mass]
    (True, [[0.3333, 0.0, 0.1667], [0.3333, 0.1667, 0.0]])
    """
    flow = _Flow(cand, mass, a, k)
    if not flow.fix_rows(strict_only=False):
        return False
    flow.journal.clear()
    ok = True
    for j in range(len(cand)):
        while flow.nnz[j] > k and ok:
            ok = flow.trim(j)
        flow.journal.clear()
    return ok and all(c <= k for c in flow.nnz)


def polish(cand: list, mass: list, cost: list, n: int, gamma: float) -> None:
    """Minimise ``<P, C> + (gamma / 2) ||P||^2`` over plans on the support of ``mass`` (in place):
    the quadratic problem restricted to that support, whose feasible plans differ by flows
    around its cycles. Along the fundamental cycle of each edge outside a spanning forest the
    objective is a parabola in the amount pushed round, minimised in closed form within the
    entries that reach zero; ``SWEEPS`` rounds of this (coordinate descent on the cycles). The
    support never grows, so no column gains a nonzero. On a forest there is nothing to do."""
    for _ in range(SWEEPS):
        parent, depth, loops = _spanning_forest(cand, mass, n)
        moved = 0.0
        for j0, s0 in loops:
            cycle = [(j0, s0)] + _tree_path(parent, depth, n + j0, cand[j0][s0])  # signs +, -, +, ..., -
            up, down = cycle[0::2], cycle[1::2]
            slope = sum(cost[j][s] + gamma * mass[j][s] for j, s in up) - sum(cost[j][s] + gamma * mass[j][s] for j, s in down)
            step = -slope / (gamma * len(cycle))
            step = min(step, min(mass[j][s] for j, s in down)) if step > 0.0 else max(step, -min(mass[j][s] for j, s in up))
            for j, s in up:
                mass[j][s] = max(mass[j][s] + step, 0.0)
            for j, s in down:
                mass[j][s] = max(mass[j][s] - step, 0.0)
            moved = max(moved, abs(step))
        if moved <= 1e-10 * max(max(col) for col in mass):  # rounding is all that moves
            return


SWEEPS = 20  # rounds of cycle moves in :func:`polish`


def _spanning_forest(cand: list, mass: list, n: int) -> tuple[list, list, list]:
    """Breadth-first spanning forest of the positive entries (nodes: rows ``0..n-1``, column ``j``
    is ``n + j``): ``parent[node] = (node above, (j, s))``, depths, and the entries left out."""
    m = len(cand)
    adj: list[list[tuple[int, int, int]]] = [[] for _ in range(n + m)]
    for j, (rows, col) in enumerate(zip(cand, mass)):
        for s, (i, x) in enumerate(zip(rows, col)):
            if x > 0.0:
                adj[i].append((n + j, j, s))
                adj[n + j].append((i, j, s))
    parent: list = [None] * (n + m)
    depth = [-1] * (n + m)
    used = set()
    for root in range(n + m):
        if depth[root] >= 0:
            continue
        depth[root] = 0
        queue = deque([root])
        while queue:
            u = queue.popleft()
            for v, j, s in adj[u]:
                if depth[v] < 0:
                    depth[v], parent[v] = depth[u] + 1, (u, (j, s))
                    used.add((j, s))
                    queue.append(v)
    loops = [(j, s) for j, col in enumerate(mass) for s, x in enumerate(col) if x > 0.0 and (j, s) not in used]
    return parent, depth, loops


def _tree_path(parent: list, depth: list, u: int, v: int) -> list:
    """The entries on the forest path from node ``u`` to node ``v`` (same tree), in order."""
    head, tail = [], []
    while u != v:
        if depth[u] >= depth[v]:
            u, e = parent[u]
            head.append(e)
        else:
            v, e = parent[v]
            tail.append(e)
    return head + tail[::-1]


def tree_duals(cand: list, mass: list, cost: list, n: int, gamma: float) -> tuple[list, list]:
    """``alpha`` (n), ``beta`` (m) with ``alpha_i + beta_j = cost[j][s] + gamma mass[j][s]`` on a
    spanning forest of the positive entries (rooted at ``alpha = 0``): the dual variables of the
    quadratic problem restricted to the plan's support (exact where the support is a forest)."""
    m = len(cand)
    alpha, beta = [0.0] * n, [0.0] * m
    seen_row, seen_col = [False] * n, [False] * m
    by_row: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    by_col: list[list[tuple[int, float]]] = [[] for _ in range(m)]
    for j in range(m):
        for i, x, c in zip(cand[j], mass[j], cost[j]):
            if x > 0.0:
                by_row[i].append((j, c + gamma * x))
                by_col[j].append((i, c + gamma * x))
    for root in range(n):
        if seen_row[root]:
            continue
        seen_row[root] = True
        queue = deque([root])
        while queue:
            i = queue.popleft()
            for j, v in by_row[i]:
                if seen_col[j]:
                    continue
                seen_col[j] = True
                beta[j] = v - alpha[i]
                for i2, v2 in by_col[j]:
                    if not seen_row[i2]:
                        seen_row[i2] = True
                        alpha[i2] = v2 - beta[j]
                        queue.append(i2)
    return alpha, beta
