"""Array-API building blocks the standard lacks: log-sum-exp, partial sort, row scatter.

Each helper is written against the standard; where a library has a faster
native function (a partial sort, an indexed add) it is used in the way
``array_api_extra`` delegates, with the standard as the fallback.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as compat
import array_api_extra as xpx

from ._dispatch import glue_for, values_known

__all__ = ["logsumexp", "top_values", "add_at_rows", "normal_exponent", "into", "matvec", "matvec_t"]


def logsumexp(xp: Any, z: Any, axis: int = -1, keepdims: bool = False) -> Any:
    """Max-shifted ``log(sum(exp(z), axis))``, exact for ``-inf`` entries.

    Examples
    --------
    >>> import numpy as np
    >>> float(logsumexp(np, np.array([1000.0, 1000.0])))  # no overflow
    1000.6931471805599
    """
    zmax = xp.max(z, axis=axis, keepdims=True)
    zmax = xp.where(xp.isfinite(zmax), zmax, xp.zeros_like(zmax))
    out = xp.log(xp.sum(xp.exp(z - zmax), axis=axis, keepdims=True)) + zmax
    return out if keepdims else xp.squeeze(out, axis=axis)


def top_values(xp: Any, x: Any, count: int, *, largest: bool = False) -> tuple[Any, Any]:
    """The ``count`` smallest (or largest) entries along the last axis, best first, and the
    index of the first-ranked entry (shape ``x.shape[:-1]``) where the partial sort gives it
    for free (``torch.topk``), else ``None``.

    O(n + count log count) where the library has a partial sort (``topk``,
    ``partition``), otherwise one ``xp.sort``.

    >>> import numpy as np
    >>> top_values(np, np.array([4.0, 1.0, 3.0, 2.0]), 2, largest=True)
    (array([4., 3.]), None)
    """
    n = x.shape[-1]
    if not 1 <= count <= n:
        raise ValueError(f"count must be in [1, {n}], got {count}")
    if compat.is_jax_namespace(xp):
        return glue_for(xp).top_values(x, count, largest=largest), None
    if compat.is_torch_namespace(xp):
        vals, index = xp.topk(x, count, dim=-1, largest=largest, sorted=True)
        return vals, index[..., 0]
    if compat.is_numpy_namespace(xp) or compat.is_cupy_namespace(xp):
        if count < n:
            x = xp.partition(x, n - count, axis=-1)[..., n - count :] if largest else xp.partition(x, count - 1, axis=-1)[..., :count]
        vals = xp.sort(x, axis=-1)
        return (xp.flip(vals, axis=-1) if largest else vals), None
    return xp.sort(x, axis=-1, descending=largest)[..., :count], None


def add_at_rows(xp: Any, g: Any, index: Any, value: Any) -> Any:
    """``g[..., index[...]] += value[...]``: one entry per row of ``g`` (shape ``(..., n)``).

    ``index`` and ``value`` have shape ``(...,)``. Returns the result (``g`` may
    be updated in place; it must be a temporary of the caller's).
    """
    n = g.shape[-1]
    if compat.is_array_api_strict_namespace(xp) or not values_known(xp, g):
        # The standard has no indexed add, and traced code (jax.jit, torch.compile) fuses an
        # element-wise mask into the kernel around it where a scatter stays a separate pass:
        # a one-hot row mask instead.
        hit = xp.arange(n, device=compat.device(g))[None, :] == xp.reshape(index, (-1, 1))
        hit = xp.reshape(hit, g.shape)
        return g + xp.where(hit, value[..., None], xp.zeros_like(g))
    shape = g.shape
    flat = xp.reshape(g, (-1,))
    rows = xp.arange(flat.shape[0] // n, device=compat.device(g), dtype=index.dtype)
    flat = xpx.at(flat, xp.reshape(index, (-1,)) + rows * n).add(xp.reshape(value, (-1,)))
    return xp.reshape(flat, shape)


def normal_exponent(xp: Any, dtype: Any) -> float:
    """``-log(smallest normal float)`` of ``dtype``: 87.3 for float32, 708.4 for float64."""
    return -math.log(float(xp.finfo(dtype).smallest_normal))


def into(xp: Any, buffer: Any, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` written into ``buffer`` (NumPy, CuPy, PyTorch: their ``out=``), else returned new.

    ``fn`` is an element-wise function of ``xp`` (``xp.multiply``, ``xp.maximum``,
    ...) whose result has ``buffer``'s shape and dtype. One pass and no fresh
    allocation, where a copy followed by an in-place operator is two
    passes; JAX arrays are immutable (XLA fuses the chain) and the strict
    namespace has no ``out=``, nor has PyTorch under autograd, ``torch.func`` or
    ``torch.compile``.

    >>> import numpy as np
    >>> buf = np.zeros(3)
    >>> into(np, buf, np.multiply, np.arange(3.0), 2.0) is buf, buf.tolist()
    (True, [0.0, 2.0, 4.0])
    """
    if compat.is_numpy_namespace(xp) or compat.is_cupy_namespace(xp):
        return fn(*args, out=buffer)
    if compat.is_torch_namespace(xp):
        if glue_for(xp).accepts_out(buffer, *args):
            return fn(*args, out=buffer)
    return fn(*args)


def matvec(xp: Any, mat: Any, v: Any) -> Any:
    """``mat @ v`` over leading batch dimensions, as a row vector times ``mat^T``
    (a view): PyTorch's batched matrix-vector product is ~4x slower on CPU."""
    if mat.ndim == 2 and v.ndim == 1:
        return mat @ v
    return xp.squeeze(v[..., None, :] @ xp.matrix_transpose(mat), axis=-2)


def matvec_t(xp: Any, mat: Any, u: Any) -> Any:
    """``mat^T @ u`` over leading batch dimensions, without transposing ``mat`` in memory."""
    if mat.ndim == 2 and u.ndim == 1:
        return u @ mat
    return xp.squeeze(u[..., None, :] @ mat, axis=-2)
