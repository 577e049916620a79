"""Operators defined once as array-API forward + VJP, bound per framework.

A :class:`CoreOp` is a pair of pure array-API functions:

* ``forward(xp, *arrays, **params) -> (out, residuals)``
* ``backward(xp, arrays, residuals, cotangent, **params) -> grads``

An op that declares ``needs=True`` also receives ``needs``, one boolean per
array argument (False: nobody wants that gradient; return None for it), so a
frozen input costs nothing; the PyTorch glue fills it from autograd, other
backends ask for every gradient (JAX's compiler drops unused ones under ``jit``).

``out`` is one array, or a tuple of arrays when the op declares ``n_out > 1``;
the backward then receives a tuple of cotangents, one per output, where
``None`` stands for a zero cotangent (an output nobody differentiated, or an
integer or boolean output, which never carries a gradient). ``grads`` has one
entry per array argument (``None`` for no gradient).

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
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import array_api_compat as compat

from ._dispatch import glue_for

__all__ = ["CoreOp", "Differentiable", "differentiable", "vjp", "pytree", "PYTREES"]


PYTREES: list[tuple[type, tuple[str, ...], tuple[str, ...]]] = []


def pytree(*static: str) -> Callable[[type], type]:
    """Declare a result dataclass a pytree: the glue registers it with JAX and PyTorch, so
    ``jax.jit``, ``jax.vmap`` and ``torch.compile`` pass it through. Fields named in
    ``static`` are hashable metadata; the others are arrays (or tuples of arrays)."""

    def register(cls: type) -> type:
        names = tuple(f.name for f in fields(cls))
        PYTREES.append((cls, tuple(n for n in names if n not in static), tuple(static)))
        return cls

    return register


@dataclass(frozen=True, eq=False)
class CoreOp:
    """A differentiable array-API operator: ``forward`` and its ``backward``."""

    name: str
    forward: Callable[..., tuple[Any, tuple[Any, ...]]]
    backward: Callable[..., tuple[Any, ...]]
    n_out: int = 1
    needs: bool = False

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
        if fn.op.n_out == 1:
            _check_cotangent(xp, cotangent, out, "cotangent")
        else:
            if not isinstance(cotangent, (tuple, list)) or len(cotangent) != fn.op.n_out:
                raise TypeError(f"cotangent must be a tuple of {fn.op.n_out} arrays (None for zero), one per output")
            for i, (c, o) in enumerate(zip(cotangent, out)):
                if c is not None:
                    _check_cotangent(xp, c, o, f"cotangent[{i}]")
            cotangent = tuple(cotangent)
        return tuple(fn.op.backward(xp, arrays, residuals, cotangent, **params))

    return out, pullback


def _check_cotangent(xp: Any, cotangent: Any, out: Any, name: str) -> None:
    """A cotangent must be an array of the output's namespace and shape (a Python scalar is not)."""
    if not compat.is_array_api_obj(cotangent) or compat.array_namespace(cotangent) is not xp or tuple(cotangent.shape) != tuple(out.shape):
        raise ValueError(
            f"{name} must be a {xp.__name__} array of shape {tuple(out.shape)}, "
            f"got {type(cotangent).__name__} of shape {tuple(getattr(cotangent, 'shape', ()))}"
        )
