"""Argument checks shared by the public operators: clear errors naming the argument."""

from __future__ import annotations

import math
import operator
import sys
from typing import Any

import array_api_compat as compat

from ._dispatch import glue_for, values_known

__all__ = ["check_nonempty", "namespace_of", "check_int", "check_positive_float", "check_axis", "check_finite_values", "check_choice"]


def _placement(x: Any) -> Any:
    """The device(s) holding ``x``: a set for JAX arrays (a sharded array spans several, and
    the same devices under two shardings is one placement), ``None`` where unknown (a JAX
    tracer), else ``compat.device(x)``."""
    devices = getattr(x, "devices", None)
    if callable(devices) and compat.is_jax_array(x):
        try:
            return frozenset(devices())
        except Exception:  # a tracer has no concrete placement
            return None
    return compat.device(x)


def namespace_of(**arrays: Any) -> Any:
    """The array namespace shared by the named arrays (real floating dtype, one device).

    Raises ``TypeError`` naming the argument for a non-array, an integer/bool/complex
    dtype, or arrays from two frameworks, and ``ValueError`` for two devices.
    """
    spaces = {}
    for name, arr in arrays.items():
        try:
            spaces[name] = compat.array_namespace(arr)
        except TypeError:
            raise TypeError(f"{name} must be an array (NumPy, CuPy, PyTorch, JAX, ...), got {type(arr).__name__}") from None
    names = list(spaces)
    first = names[0]
    for name in names[1:]:
        if spaces[name] is not spaces[first]:
            raise TypeError(
                f"{name} is a {type(arrays[name]).__module__} array but {first} is a "
                f"{type(arrays[first]).__module__} array: pass arrays from one framework"
            )
        if _placement(arrays[name]) != _placement(arrays[first]) and None not in (
            _placement(arrays[name]),
            _placement(arrays[first]),
        ):
            raise ValueError(
                f"{name} is on device {compat.device(arrays[name])} but {first} is on "
                f"{compat.device(arrays[first])}: move them to one device"
            )
    xp = spaces[first]
    for name, arr in arrays.items():
        if not xp.isdtype(arr.dtype, "real floating") or xp.finfo(arr.dtype).bits > 64:
            raise TypeError(f"{name} must have a real floating dtype (float16, float32 or float64), got {arr.dtype}")
        if type(arr).__name__ == "matrix":
            raise TypeError(f"{name} is a numpy.matrix, whose operators follow matrix rules: pass np.asarray({name})")
        if getattr(arr, "is_meta", False):
            raise ValueError(f"{name} is a meta tensor (shape only, no values): softk's solvers need the values")
    return xp


def check_nonempty(x: Any, name: str = "x") -> None:
    """Reject an array with no entries (an empty batch): there is nothing to solve."""
    if any(size == 0 for size in x.shape):
        raise ValueError(f"{name} has no entries (shape {tuple(x.shape)}): an empty batch has nothing to solve")


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int with ``low <= value <= high``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must satisfy {low} <= {name} <= {high}, got {value}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """``value`` as a finite, strictly positive Python float."""
    if isinstance(value, (bool, str, bytes, complex)):
        raise TypeError(f"{name} must be a positive real number, got {value!r}")
    try:
        value = float(value)
    except Exception:
        raise TypeError(
            f"{name} must be a concrete Python float (it is a static parameter, "
            f"not a traced value), got {type(value).__name__}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    if value < sys.float_info.min:
        raise ValueError(f"{name} must be at least {sys.float_info.min:.3g} (a normal float), got {value}")
    return value


def check_axis(axis: Any, ndim: int) -> int:
    """``axis`` normalised to a negative index (so leading batch dims may be added)."""
    if isinstance(axis, bool):
        raise TypeError("axis must be an integer, got a bool")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {axis!r}") from None
    if ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimension(s)")
    return axis - ndim if axis >= 0 else axis


def check_finite_values(xp: Any, name: str, x: Any) -> None:
    """Reject NaN and infinite entries, where the values can be read (not under ``jax.jit`` or
    ``torch.func.vmap``); PyTorch's glue checks there itself (``check_unread``: under
    ``torch.compile`` at run time, from an operator in the compiled graph)."""
    if not values_known(xp, x):
        unread = getattr(glue_for(xp), "check_unread", None)
        if unread is not None:
            unread(x, name)
        return
    total = xp.sum(x)
    if not values_known(xp, total):
        return  # a concrete array inside jax.jit: reductions of it are traced
    if bool(xp.isfinite(total)):
        return  # a sum propagates NaN and inf: one cheap reduction covers the common case
    if bool(xp.any(xp.isnan(x))):
        raise ValueError(f"{name} contains NaN")
    if bool(xp.any(xp.isinf(x))):
        raise ValueError(
            f"{name} contains +-inf: mask entries with a large finite value instead (a score: the "
            f"finite minimum minus the range; a cost: a value far above the others, such as 1e20 in "
            f"float64 or 1e10 in float32, which the plan then avoids exactly)"
        )


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
