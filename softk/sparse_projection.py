"""The k-sparse projection onto the simplex, and the top-k selection it starts from.

The best approximation of ``x`` in the probability simplex with at most ``k``
nonzeros is the Euclidean projection onto the simplex of the ``k`` largest
entries of ``x`` (the others set to zero) [Kyrillidis et al. 2013]::

    p = argmin { ||p - x||^2 : p >= 0, sum(p) = 1, ||p||_0 <= k },
    p_i = max(x_i - tau, 0) on the top k,   0 elsewhere,

with ``tau`` from one cumulative sum over the sorted top-k values. This is the
inner problem of the sparsity-constrained semi-dual (:mod:`softk.sparse_ot`).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as compat
import array_api_extra as xpx
from array_api_compat import device

from ._validate import check_int, namespace_of

__all__ = ["top_indices", "simplex_on_sorted", "sparse_simplex_projection", "scatter_last", "ARGMAX_PASSES"]

ARGMAX_PASSES = 32  # JAX: up to this k, k max passes (O(k n)) beat a full sort on XLA CPU
ARGMAX_PASSES_NUMPY = 4  # NumPy, CuPy: up to this k, k argmax passes beat one argpartition


def top_indices(xp: Any, x: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` largest entries along the last axis, largest first, and their indices.

    Exactly ``k`` distinct indices per row. NumPy and CuPy use ``k`` ``argmax``
    passes for ``k <= ARGMAX_PASSES_NUMPY``, else ``argpartition`` (O(n)),
    PyTorch ``topk``, JAX ``k`` passes of a max and the first position holding it
    for ``k <= ARGMAX_PASSES`` (``jnp.argpartition`` is a near-full sort on XLA CPU),
    other libraries one ``argsort``; the passes break ties by position.

    >>> import numpy as np
    >>> top_indices(np, np.array([[0.1, 0.9, 0.5]]), 2)
    (array([[0.9, 0.5]]), array([[1, 2]]))
    """
    n = x.shape[-1]
    if compat.is_torch_namespace(xp):
        vals, idx = xp.topk(x, k, dim=-1, largest=True, sorted=True)
        return vals, idx
    if (compat.is_numpy_namespace(xp) or compat.is_cupy_namespace(xp)) and k <= ARGMAX_PASSES_NUMPY:
        rest = xp.reshape(xp.asarray(x, copy=True), (-1, n))  # k argmax passes, each masking its pick
        rows = xp.arange(rest.shape[0])
        picked = []
        for _ in range(k):
            i = xp.argmax(rest, axis=-1)
            picked.append(i)
            rest[rows, i] = -xp.inf
        idx = xp.reshape(xp.stack(picked, axis=-1), (*x.shape[:-1], k))
        return xp.take_along_axis(x, idx, axis=-1), idx
    if compat.is_numpy_namespace(xp) or compat.is_cupy_namespace(xp):
        idx = xp.argpartition(x, n - k, axis=-1)[..., n - k :]
        vals = xp.take_along_axis(x, idx, axis=-1)
        order = xp.argsort(-vals, axis=-1, kind="stable")
        return xp.take_along_axis(vals, order, axis=-1), xp.take_along_axis(idx, order, axis=-1)
    if compat.is_jax_namespace(xp) and k <= ARGMAX_PASSES:
        # each pass: the max, then the first position holding it (two plain reductions: XLA's
        # CPU argmax, a reduction over (value, index) pairs, is about 1.5x slower)
        positions = xp.arange(n, device=device(x))
        low = xp.asarray(-xp.inf, dtype=x.dtype)
        picked = []
        rest = x
        for _ in range(k):
            top = xp.max(rest, axis=-1, keepdims=True)
            i = xp.min(xp.where(rest == top, positions, n), axis=-1)
            picked.append(i)
            rest = xp.where(positions == i[..., None], low, rest)
        idx = xp.stack(picked, axis=-1)
        return xp.take_along_axis(x, idx, axis=-1), idx  # values gathered: gradients to the picks only
    idx = xp.argsort(x, axis=-1, descending=True, stable=True)[..., :k]
    return xp.take_along_axis(x, idx, axis=-1), idx


def simplex_on_sorted(xp: Any, vals: Any) -> Any:
    """Project each row of ``vals`` (sorted, largest first) onto the probability simplex.

    ``p = max(vals - tau, 0)`` with ``tau = (sum of the rho largest - 1) / rho``,
    ``rho`` the number of ``j`` with ``vals_j > (cumsum_j - 1) / j``.

    >>> import numpy as np
    >>> simplex_on_sorted(np, np.array([[2.0, 0.5], [0.3, 0.3]])).tolist()
    [[1.0, 0.0], [0.5, 0.5]]
    """
    k = vals.shape[-1]
    ranks = xp.arange(1, k + 1, dtype=vals.dtype, device=device(vals))
    cums = xp.cumulative_sum(vals, axis=-1)
    active = vals * ranks - (cums - 1.0) > 0.0
    rho = xp.maximum(xp.sum(xp.astype(active, xp.int64), axis=-1, keepdims=True), xp.ones_like(cums[..., :1], dtype=xp.int64))
    tau = (xp.take_along_axis(cums, rho - 1, axis=-1) - 1.0) / xp.astype(rho, vals.dtype)
    return xp.clip(vals - tau, min=0.0)


def sparse_simplex_projection(x: Any, k: int) -> Any:
    """The closest point to ``x`` (last axis) in the simplex with at most ``k`` nonzeros.

    ``argmin ||p - x||^2`` over ``p >= 0``, ``sum(p) = 1``, ``||p||_0 <= k``:
    the simplex projection of the ``k`` largest entries, zeros elsewhere.
    Batched over leading dimensions, on any array-API library (no gradient).

    Examples
    --------
    >>> import numpy as np
    >>> from softk.sparse_projection import sparse_simplex_projection
    >>> sparse_simplex_projection(np.array([0.5, 0.1, 0.4, -1.0]), 2).round(3).tolist()
    [0.55, 0.0, 0.45, 0.0]
    """
    xp = namespace_of(x=x)
    if x.ndim < 1:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    k = check_int("k", k, 1, x.shape[-1])
    vals, idx = top_indices(xp, x, k)
    p = simplex_on_sorted(xp, vals)
    return scatter_last(xp, p, idx, x.shape[-1])


def scatter_last(xp: Any, values: Any, idx: Any, n: int) -> Any:
    """Dense ``(..., n)`` array with ``values`` at the distinct positions ``idx`` along the last axis."""
    # zeros made from ``values``, so that they are batched like them under torch.func.vmap
    out = xp.broadcast_to(xp.zeros_like(values[..., :1]), (*values.shape[:-1], n))
    if compat.is_array_api_strict_namespace(xp):  # no indexed update: one masked pass per position
        positions = xp.arange(n, device=device(values))
        for j in range(idx.shape[-1]):
            out = xp.where(positions == idx[..., j : j + 1], values[..., j : j + 1], out)
        return out
    rows = xp.reshape(xp.arange(math.prod(out.shape[:-1]), device=device(values), dtype=idx.dtype), (*out.shape[:-1], 1))
    flat = xp.reshape(idx + rows * n, (-1,))
    return xp.reshape(xpx.at(xp.reshape(out, (-1,)), flat).set(xp.reshape(values, (-1,)), copy=True), out.shape)

