"""Glue for JAX: the core's VJP as a ``jax.custom_vjp``, loops as ``lax.while_loop``.

Static parameters become part of the cached, jitted custom-VJP function (they
are hashable Python values), so the op works under ``jit``, ``vmap`` and
``grad``, and eager calls compile the solver loop once per shape.
Forward-mode (``jvp``/``jacfwd``) is not defined for a custom VJP.

Sharded inputs (``jax.sharding``, see docs/distributed.md) need nothing here
on meshes with ``Auto`` axes: XLA's partitioner splits the ops and turns the
reductions over a sharded axis (the log-sum-exps) into collectives. On a mesh
with ``Explicit`` axes (``jax.make_mesh``'s default) every op must have a
well-defined output sharding, which the core's slicing does not give, so each
op runs inside ``jax.sharding.auto_axes``: the partitioner chooses inside it and
the output keeps the input's sharding on its leading dimensions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softk._op import PYTREES

__all__ = ["apply", "while_loop", "values_known", "on_false", "top_values", "host_call"]


@functools.lru_cache(maxsize=256)
def _custom_vjp(op: Any, params: tuple) -> Callable:
    kwargs = dict(params)

    @jax.custom_vjp
    def fn(*arrays: jax.Array) -> jax.Array:
        return op.forward(jnp, *arrays, **kwargs)[0]

    def fwd(*arrays: jax.Array) -> tuple:
        out, residuals = op.forward(jnp, *arrays, **kwargs)
        return out, (arrays, residuals)

    def bwd(saved: tuple, cotangent: Any) -> tuple:
        arrays, residuals = saved
        if op.n_out > 1:  # integer outputs' cotangents (float0) carry nothing
            cotangent = tuple(None if c.dtype == jax.dtypes.float0 else c for c in cotangent)
        return tuple(op.backward(jnp, arrays, residuals, cotangent, **kwargs))

    fn.defvjp(fwd, bwd)
    return jax.jit(fn)


def apply(op: Any, arrays: tuple, params: dict) -> jax.Array:
    fn = _custom_vjp(op, tuple(sorted(params.items())))
    mesh = _explicit_mesh(arrays)
    return fn(*arrays) if mesh is None else _auto_partitioned(op, fn, arrays, mesh)


def _explicit_mesh(arrays: tuple) -> Any:
    """The abstract mesh of the first input sharded over ``Explicit`` mesh axes, else None."""
    typeof = getattr(jax, "typeof", None)  # JAX releases before sharding in types have no Explicit axes
    if typeof is None:
        return None
    for x in arrays:
        mesh = getattr(getattr(typeof(x), "sharding", None), "mesh", None)
        if mesh is not None and not mesh.empty and mesh.explicit_axes:
            return mesh
    return None


def _auto_partitioned(op: Any, fn: Callable, arrays: tuple, mesh: Any) -> jax.Array:
    """``fn(*arrays)`` with the mesh's Explicit axes switched to Auto inside it."""
    P = jax.sharding.PartitionSpec
    with jax.sharding.use_abstract_mesh(mesh):
        if op.n_out > 1:  # several outputs (potentials and solver statistics): replicated
            spec = (P(),) * op.n_out
        else:
            shape = jax.eval_shape(jax.sharding.auto_axes(fn, axes=mesh.explicit_axes, out_sharding=P()), *arrays).shape
            spec = _leading_spec(arrays[0], shape)
        return jax.sharding.auto_axes(fn, axes=mesh.explicit_axes, out_sharding=spec)(*arrays)


def _leading_spec(x: Any, shape: tuple) -> Any:
    """``x``'s partition spec on the leading dimensions it shares with ``shape`` (batch, points), then replicated."""
    spec = tuple(jax.typeof(x).sharding.spec)
    out = []
    for i, size in enumerate(shape):
        if i >= min(x.ndim, len(spec)) or x.shape[i] != size:
            break
        out.append(spec[i])
    return jax.sharding.PartitionSpec(*out)


def while_loop(cond: Callable, body: Callable, state: Any, traceable: bool = False) -> Any:
    return jax.lax.while_loop(cond, body, state)  # always traced


def values_known(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def on_false(flag: jax.Array, action: Callable[[], None]) -> None:
    """Run ``action`` when ``flag`` is False, at run time (works inside ``jit``)."""

    def callback(value: Any) -> None:
        if not bool(jnp.all(value)):
            action()

    jax.debug.callback(callback, flag)


def host_call(fn: Callable[..., tuple], outputs: tuple, *arrays: jax.Array) -> tuple:
    """``fn`` on NumPy copies of the arrays' values through ``jax.pure_callback`` (see
    :func:`softk._dispatch.host_call`), eager or traced: on the CPU host, so a
    device-to-host transfer and back on an accelerator. The inputs pass
    ``stop_gradient`` (the outputs are constants to autodiff); under ``vmap``
    ``fn`` runs once per batch entry (``sequential``), as for unbatched calls."""
    specs = tuple(jax.ShapeDtypeStruct(tuple(shape), dtype) for shape, dtype in outputs)

    def host(*values: Any) -> tuple:
        out = fn(*(np.asarray(v) for v in values))
        return tuple(np.asarray(o, dtype=spec.dtype) for o, spec in zip(out, specs))

    arrays = tuple(jax.lax.stop_gradient(x) for x in arrays)
    return tuple(jax.pure_callback(host, specs, *arrays, vmap_method="sequential"))


def top_values(x: jax.Array, k: int, *, largest: bool) -> jax.Array:
    """The ``k`` largest (or smallest) values along the last axis, sorted.

    ``jnp.partition`` lowers to a near-full sort on XLA CPU (~100x slower at
    n = 1e5); ``lax.top_k`` is O(n), and the barrier stops XLA from fusing the
    caller's slicing back into a sort.
    """
    vals = jax.lax.top_k(x if largest else -x, k)[0]
    vals = jax.lax.optimization_barrier(vals)
    return vals if largest else -vals


def _register_pytrees() -> None:
    """Register the core's result types (:func:`softk._op.pytree`) as JAX pytrees."""
    for cls, children, static in PYTREES:
        try:
            jax.tree_util.register_dataclass(cls, data_fields=list(children), meta_fields=list(static))
        except ValueError:  # already registered (the module was reloaded)
            pass


_register_pytrees()
