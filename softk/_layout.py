"""Array layout shared by the operators: the working axis moved last, half precision widened."""

from __future__ import annotations

from typing import Any

__all__ = ["to_rows", "from_rows", "last_order"]


def to_rows(xp: Any, x: Any, axis: int) -> Any:
    """Move ``axis`` (negative) last and compute in at least float32.

    ``permute_dims`` rather than ``moveaxis``: it has batching rules everywhere
    (``torch.func.jacrev`` runs the backward under ``vmap``).
    """
    if axis != -1:
        x = xp.permute_dims(x, last_order(x.ndim, axis))
    return xp.astype(x, xp.float32) if xp.finfo(x.dtype).bits < 32 else x


def from_rows(xp: Any, y: Any, axis: int, dtype: Any) -> Any:
    """Inverse of :func:`to_rows`, cast back to ``dtype``."""
    y = xp.astype(y, dtype, copy=False)
    if axis == -1:
        return y
    order = last_order(y.ndim, axis)
    return xp.permute_dims(y, tuple(order.index(i) for i in range(y.ndim)))


def last_order(ndim: int, axis: int) -> tuple[int, ...]:
    """The permutation that moves ``axis`` to the end."""
    axis %= ndim
    return (*(i for i in range(ndim) if i != axis), axis)
