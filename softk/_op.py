"""Operators defined once as array-API forward + VJP, bound per framework.

A :class:`CoreOp` is a pair of pure array-API functions:

* ``forward(xp, *arrays, **params) -> (out, residuals)``
* ``backward(xp, arrays, residuals, cotangent, **params) -> grads``

``params`` are static Python values (ints, floats, strings): they are hashable,
never differentiated, and under JAX they are compile-time constants. A public
operator is a :class:`Differentiable`: a ``prepare`` function that validates
the user's arguments and splits them into arrays and params, plus the core op.
Calling it dispatches to the framework glue (``softk.backends``), which
registers ``backward`` with that framework's autograd; :func:`vjp` runs the
forward and hands back the pullback directly, on every backend.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat as compat

from ._dispatch import glue_for

__all__ = ["CoreOp", "Differentiable", "differentiable", "vjp"]


@dataclass(frozen=True, eq=False)
class CoreOp:
    """A differentiable array-API operator: ``forward`` and its ``backward``."""

    name: str
    forward: Callable[..., tuple[Any, tuple[Any, ...]]]
    backward: Callable[..., tuple[Any, ...]]

    def bind(self, *arrays: Any, **params: Any) -> Any:
        """Apply the op with the framework's autograd registration."""
        xp = compat.array_namespace(*arrays)
        return glue_for(xp).apply(self, arrays, params)


class Differentiable:
    """A public operator: argument preparation in front of a :class:`CoreOp`."""

    def __init__(self, prepare: Callable[..., tuple[tuple[Any, ...], dict]], op: CoreOp):
        self.prepare = prepare
        self.op = op
        functools.update_wrapper(self, prepare)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays, params = self.prepare(*args, **kwargs)
        return self.op.bind(*arrays, **params)


def differentiable(op: CoreOp) -> Callable[[Callable], Differentiable]:
    """Decorate a ``prepare(*args, **kwargs) -> (arrays, params)`` function."""
    return lambda prepare: Differentiable(prepare, op)


def vjp(fn: Differentiable, *args: Any, **kwargs: Any) -> tuple[Any, Callable]:
    """Value and pullback of a softk operator, on any backend.

    ``out, pullback = softk.vjp(softk.soft_topk, x, 3)`` then
    ``(grad_x,) = pullback(v)`` gives ``v^T d out / d x``: one gradient per
    array argument of ``fn``, as ``jax.vjp`` does. This is how NumPy and CuPy
    users get gradients; PyTorch and JAX users can also use their own autograd.

    Examples
    --------
    >>> import numpy as np, softk
    >>> x = np.array([0.3, 2.0, -1.0, 1.5])
    >>> out, pullback = softk.vjp(softk.soft_topk, x, 2, epsilon=0.01)
    >>> (grad,) = pullback(np.ones_like(x))   # d sum(out) / dx = 0: sum(out) == k
    >>> bool(np.all(np.abs(grad) < 1e-8))
    True
    """
    if not isinstance(fn, Differentiable):
        raise TypeError(f"fn must be a softk operator such as softk.soft_topk, got {fn!r}")
    arrays, params = fn.prepare(*args, **kwargs)
    xp = compat.array_namespace(*arrays)
    out, residuals = fn.op.forward(xp, *arrays, **params)

    def pullback(cotangent: Any) -> tuple[Any, ...]:
        if compat.array_namespace(cotangent) is not xp or tuple(cotangent.shape) != tuple(out.shape):
            raise ValueError(
                f"cotangent must be a {xp.__name__} array of shape {tuple(out.shape)}, "
                f"got {type(cotangent).__name__} of shape {tuple(getattr(cotangent, 'shape', ()))}"
            )
        return tuple(fn.op.backward(xp, arrays, residuals, cotangent, **params))

    return out, pullback
