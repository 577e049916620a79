"""The plan from potentials, in one place: ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``.

Every strategy forms plan entries through :func:`clipped_exp` (the fast guarded
exponential) or :func:`flushed_exp` (the same, with exact zeros), and measures
what it returns with :func:`marginal_error`.
"""

from __future__ import annotations

import math
from typing import Any

from .._dispatch import values_known
from .._xp import into, normal_exponent

__all__ = ["clipped_exp", "flushed_exp", "plan_from_potentials", "marginal_error", "balanced", "rounding_floor"]


def _floor(xp: Any, dtype: Any) -> float:
    """The smallest exponent whose ``exp`` is a normal number of ``dtype`` (with one unit to spare)."""
    return 1.0 - normal_exponent(xp, dtype)


def _floor_negligible(xp: Any, dtype: Any) -> bool:
    """Whether ``exp(floor)`` is below the rounding of any sum of entries (``<= eps^2``): in
    float32 and float64 (about 1e-38 and 1e-308), not in float16 (1.7e-4, the size of a plan
    entry), where the clipped entries must be exact zeros and nothing may be subtracted."""
    return math.exp(_floor(xp, dtype)) <= float(xp.finfo(dtype).eps) ** 2


def clipped_exp(xp: Any, z: Any) -> Any:
    """``exp(z)`` with ``z`` clipped below where the result would be subnormal.

    On CPUs the vectorised exponential falls back to a scalar path, 10-60x
    slower, for arguments whose result is subnormal or underflows; in a plan at
    small epsilon most entries do. The clipped entries (about 3e-38 in float32,
    6e-308 in float64) change a sum of ``m`` of them by far less than the
    dtype's resolution of any row or column sum; in float16, where they would
    not, they are zeros instead.

    >>> import numpy as np
    >>> float(clipped_exp(np, np.array(-1e4))) > 0.0
    True
    """
    floor = _floor(xp, z.dtype)
    e = xp.exp(xp.clip(z, min=floor))
    return e if _floor_negligible(xp, z.dtype) else xp.where(z > floor, e, xp.zeros_like(e))


def flushed_exp(xp: Any, z: Any, *, overwrite: bool = False) -> Any:
    """:func:`clipped_exp` with the clipped entries set to exact zeros (no select pass).

    ``overwrite=True`` computes in ``z``'s own memory where the library allows
    (:func:`softk._xp.into`): four passes over a large array and no fresh
    allocation (on CPUs the page faults of a fresh n x m buffer cost about
    what a pass costs).

    >>> import numpy as np
    >>> flushed_exp(np, np.array([0.0, -1e4])).tolist()
    [1.0, 0.0]
    """
    floor = _floor(xp, z.dtype)
    if not _floor_negligible(xp, z.dtype):  # float16: subtracting the cut would shift every entry
        return clipped_exp(xp, z)
    cut = math.exp(floor) * (1.0 + 64.0 * float(xp.finfo(z.dtype).eps))
    if not overwrite:
        return xp.clip(xp.exp(xp.clip(z, min=floor)) - cut, min=0.0)
    z = into(xp, z, xp.clip, z, floor, None)
    z = into(xp, z, xp.exp, z)
    z = into(xp, z, xp.subtract, z, cut)
    return into(xp, z, xp.clip, z, 0.0, None)


def plan_from_potentials(xp: Any, cost: Any, log_a: Any, log_b: Any, f: Any, g: Any, epsilon: Any) -> Any:
    """``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``, with two n x m arrays at the peak
    (in place where the library allows) and subnormal entries flushed to zero."""
    z = cost / (-epsilon)
    z += (log_a + f / epsilon)[..., :, None]
    z += (log_b + g / epsilon)[..., None, :]
    return flushed_exp(xp, z, overwrite=True)


def balanced(xp: Any, f: Any, g: Any, a: Any = None, b: Any = None) -> tuple[Any, Any]:
    """The gauge shift ``(f + c, g - c)`` (the plan is unchanged) with ``<f, a> = <g, b>``;
    uniform weights (plain means) when ``a, b`` are None. Keeps both potentials near
    zero: their rounding, not their sum's, is what limits the plan's exponent.

    >>> import numpy as np
    >>> [v.tolist() for v in balanced(np, np.array([5.0, 7.0]), np.array([-6.0]))]
    [[-1.0, 1.0], [0.0]]
    """
    mean_f = xp.mean(f, axis=-1, keepdims=True) if a is None else xp.sum(a * f, axis=-1, keepdims=True)
    mean_g = xp.mean(g, axis=-1, keepdims=True) if b is None else xp.sum(b * g, axis=-1, keepdims=True)
    shift = 0.5 * (mean_g - mean_f)
    return f + shift, g - shift


def marginal_error(xp: Any, rows: Any, cols: Any, a: Any, b: Any) -> Any:
    """``max over the batch of ||P 1 - a||_1 + ||P^T 1 - b||_1`` from the plan's row and column sums.

    This is what ``error`` reports: measured on the plan that is returned, so it
    includes the rounding of the potentials and of the exponential (a NaN sum
    reads as an infinite error).
    """
    err = xp.sum(xp.abs(rows - a), axis=-1) + xp.sum(xp.abs(cols - b), axis=-1)
    err = xp.where(xp.isnan(err), xp.full_like(err, math.inf), err)
    return xp.max(err) if err.ndim else err


def rounding_floor(xp: Any, f: Any, g: Any, epsilon: float) -> float | None:
    """``2 ulp (max|f| + max|g|) / epsilon``: about the relative rounding of the plan's entries
    (their exponent ``(f_i + g_j - C_ij) / eps`` is a difference of numbers that large), i.e.
    the smallest marginal error the dtype allows; None where the values cannot be read."""
    if not values_known(xp, f):
        return None
    scale = float(xp.max(xp.abs(f))) + float(xp.max(xp.abs(g)))
    return 2.0 * float(xp.finfo(f.dtype).eps) * scale / epsilon
