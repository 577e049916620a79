"""Glue for JAX: the core's VJP as a ``jax.custom_vjp``, loops as ``lax.while_loop``.

Static parameters become part of the cached, jitted custom-VJP function (they
are hashable Python values), so the op works under ``jit``, ``vmap`` and
``grad``, and eager calls compile the solver loop once per shape.
Forward-mode (``jvp``/``jacfwd``) is not defined for a custom VJP.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["apply", "while_loop", "values_known", "on_false", "top_values"]


@functools.lru_cache(maxsize=256)
def _custom_vjp(op: Any, params: tuple) -> Callable:
    kwargs = dict(params)

    @jax.custom_vjp
    def fn(*arrays: jax.Array) -> jax.Array:
        return op.forward(jnp, *arrays, **kwargs)[0]

    def fwd(*arrays: jax.Array) -> tuple:
        out, residuals = op.forward(jnp, *arrays, **kwargs)
        return out, (arrays, residuals)

    def bwd(saved: tuple, cotangent: jax.Array) -> tuple:
        arrays, residuals = saved
        return tuple(op.backward(jnp, arrays, residuals, cotangent, **kwargs))

    fn.defvjp(fwd, bwd)
    return jax.jit(fn)


def apply(op: Any, arrays: tuple, params: dict) -> jax.Array:
    return _custom_vjp(op, tuple(sorted(params.items())))(*arrays)


def while_loop(cond: Callable, body: Callable, state: Any) -> Any:
    return jax.lax.while_loop(cond, body, state)


def values_known(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def on_false(flag: jax.Array, action: Callable[[], None]) -> None:
    """Run ``action`` when ``flag`` is False, at run time (works inside ``jit``)."""

    def callback(value: Any) -> None:
        if not bool(jnp.all(value)):
            action()

    jax.debug.callback(callback, flag)


def top_values(x: jax.Array, k: int, *, largest: bool) -> jax.Array:
    """The ``k`` largest (or smallest) values along the last axis, sorted.

    ``jnp.partition`` lowers to a near-full sort on XLA CPU (~100x slower at
    n = 1e5); ``lax.top_k`` is O(n), and the barrier stops XLA from fusing the
    caller's slicing back into a sort.
    """
    vals = jax.lax.top_k(x if largest else -x, k)[0]
    vals = jax.lax.optimization_barrier(vals)
    return vals if largest else -vals
