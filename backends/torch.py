"""Glue for PyTorch: the core's VJP as a ``torch.autograd.Function``.

The Function works with ``torch.autograd.gradcheck``, ``torch.func`` transforms
(its ``vmap`` rule moves the mapped dimension to the front: every core op
treats leading dimensions as batch; a loop outside it that meets per-sample
values runs masked, as ``lax.while_loop`` under ``jax.vmap``) and
``torch.compile`` (traceable solver loops as PyTorch's ``while_loop`` operator,
the others at a graph break).

Second derivatives: when the backward runs with autograd recording
(``create_graph=True``, ``gradgradcheck``, ``torch.autograd.functional.hessian``)
and the op can rebuild its residuals from its inputs and its (saved,
differentiable) output (``op.residuals``), the core backward runs on them with
autograd on, so it is itself differentiated exactly. Other ops refuse double
backward with a clear error (``once_differentiable``) instead of treating their
residuals as constants.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xp
import torch
import torch.utils._pytree as torch_pytree

from softk._op import PYTREES
from softk._validate import check_finite_values
from softk._warnings import warn_not_converged

__all__ = ["apply", "while_loop", "values_known", "on_false", "warn_unread", "check_unread", "accepts_out", "host_call"]


class _TracedFunction(torch.autograd.Function):
    """The op's forward and backward: what ``torch.compile`` traces (Dynamo cannot trace a
    Function with a custom ``jvp``, so forward mode is not offered inside compiled code)."""

    @staticmethod
    def forward(op: Any, params: dict, *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, residuals = op.forward(xp, *arrays, **params)
        return (*(out if op.n_out > 1 else (out,)), *residuals)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        op, params, *arrays = inputs
        ctx.op, ctx.params, ctx.n_arrays = op, params, len(arrays)
        ctx.save_for_backward(*arrays, *output[op.n_out :], *output[: op.n_out])
        ctx.save_for_forward(*arrays, *output[op.n_out :], *output[: op.n_out])
        exact = [t for t in output[: op.n_out] if not t.is_floating_point()]  # counters and flags
        ctx.mark_non_differentiable(*output[op.n_out :], *exact)
        ctx.set_materialize_grads(False)  # no zero-filled cotangents for the residual outputs

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple:
        try:
            return _backward(ctx, cotangents)
        except RuntimeError as err:
            if not any(c is not None and torch._C._functorch.is_legacy_batchedtensor(c) for c in cotangents):
                raise
            raise RuntimeError(
                f"softk.{ctx.op.name}: torch.autograd.functional.jacobian(..., vectorize=True) cannot batch "
                "this operator's backward (PyTorch's legacy batching has no rule for one of its ops); "
                "use torch.func.jacrev or vectorize=False"
            ) from err



class _CoreFunction(_TracedFunction):
    """:class:`_TracedFunction` with forward mode (``jvp``) and a ``torch.func.vmap`` rule."""

    @classmethod
    @torch.compiler.disable  # eager only (compiled code uses _TracedFunction): Dynamo must not trace it
    def apply(cls, *args: Any) -> Any:
        """``Function.apply`` without its ``inspect.signature`` bind of default arguments on every
        call (~25 us, a sixth of a small call; ``forward`` has none) outside ``torch.func`` transforms."""
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        args = torch._functorch.utils.unwrap_dead_wrappers(args)
        return super(torch.autograd.Function, cls).apply(*args)

    @staticmethod
    def jvp(ctx: Any, _op: Any, _params: Any, *tangents: torch.Tensor | None) -> tuple:
        """Forward mode by transposing the (linear in the cotangent) backward: ``J t = d/du <J^T u, t>``."""
        op, params, n_arrays = ctx.op, ctx.params, ctx.n_arrays
        saved = ctx.saved_tensors
        arrays, residuals, outs = saved[:n_arrays], saved[n_arrays : len(saved) - op.n_out], saved[len(saved) - op.n_out :]
        with torch.enable_grad():  # integer outputs (counters) carry no tangent
            u = tuple(torch.zeros_like(o, requires_grad=True) if o.is_floating_point() else None for o in outs)
            grads = op.backward(xp, arrays, residuals, u if op.n_out > 1 else u[0], **params)
            pairs = [(g, t) for g, t in zip(grads, tangents) if g is not None and t is not None and g.requires_grad]
            wrt = [w for w in u if w is not None]
            found = torch.autograd.grad([g for g, _ in pairs], wrt, [t for _, t in pairs], allow_unused=True) if pairs else ()
        found = iter(found)
        out_tangents = []
        for w, o in zip(u, outs):
            t = None if w is None else next(found, None)
            out_tangents.append(torch.zeros_like(o) if t is None and w is not None else t)
        return (*out_tangents, *(None for _ in residuals))

    @staticmethod
    def vmap(info: Any, in_dims: tuple, op: Any, params: dict, *arrays: torch.Tensor) -> tuple:
        front = [
            a.movedim(d, 0) if d is not None else a.expand(info.batch_size, *a.shape)
            for a, d in zip(arrays, in_dims[2:])
        ]
        outs = _CoreFunction.apply(op, params, *front)
        # a 0-d output (a solve's error, iteration count or flag) is one value for the whole
        # mapped batch, which the core solved as one: every sample gets it (the largest error)
        return outs, tuple(0 if o.ndim > 0 else None for o in outs)


def _backward(ctx: Any, cotangents: tuple) -> tuple:
    """The core backward; differentiable (exact second derivatives) where the op rebuilds its residuals."""
    cotangents = tuple(None if c is None else c.contiguous() for c in cotangents[: ctx.op.n_out])
    if all(c is None for c in cotangents):
        return (None,) * (2 + ctx.n_arrays)
    saved = ctx.saved_tensors
    n_arrays, n_out = ctx.n_arrays, ctx.op.n_out
    arrays, residuals, outs = saved[:n_arrays], saved[n_arrays:-n_out], saved[-n_out:]
    cotangent = cotangents if n_out > 1 else cotangents[0]
    rebuild = getattr(ctx.op, "residuals", None)
    if torch.is_grad_enabled() and rebuild is not None:  # a second derivative is being recorded
        rebuilt = rebuild(xp, arrays, outs if n_out > 1 else outs[0], **ctx.params)
        if rebuilt is not None:
            return (None, None, *ctx.op.backward(xp, arrays, rebuilt, cotangent, **_backward_params(ctx)))
    return _first_order(ctx, arrays, residuals, cotangent)


def _backward_params(ctx: Any) -> dict:
    """The op's params, plus which inputs want a gradient where the op asks (``CoreOp.needs``)."""
    return {**ctx.params, "needs": tuple(ctx.needs_input_grad[2:])} if ctx.op.needs else ctx.params


def _first_order(ctx: Any, arrays: tuple, residuals: tuple, cotangent: Any) -> tuple:
    """The core backward with the residuals as saved; differentiating it again raises."""
    recording = torch.is_grad_enabled()
    with torch.no_grad():
        grads = ctx.op.backward(xp, arrays, residuals, cotangent, **_backward_params(ctx))
    if recording:  # tie each gradient to the inputs, so differentiating it reaches the error
        cots = cotangent if isinstance(cotangent, tuple) else (cotangent,)
        ties = tuple(t for t in (*arrays, *cots) if t is not None)
        grads = tuple(g if g is None else _NoSecondDerivative.apply(ctx.op.name, g, *ties) for g in grads)
    return (None, None, *grads)


class _NoSecondDerivative(torch.autograd.Function):
    """Identity on a first derivative that the op cannot differentiate again: a clear error
    instead of a second derivative computed with its residuals as constants."""

    generate_vmap_rule = True  # the identity maps over a batch as is (torch.func.vmap of grad)

    @staticmethod
    def forward(name: str, grad: torch.Tensor, *ties: torch.Tensor) -> torch.Tensor:
        return grad.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.name = inputs[0]

    @staticmethod
    def backward(ctx: Any, *_: torch.Tensor) -> tuple:
        raise RuntimeError(
            f"softk.{ctx.name} has no second derivative on PyTorch (double backward, create_graph=True, "
            "hessian): its backward is not differentiable yet. Use JAX's jax.hessian, or differentiate once."
        )


def apply(op: Any, arrays: tuple, params: dict) -> Any:
    function = _TracedFunction if torch.compiler.is_compiling() else _CoreFunction
    outs = function.apply(op, params, *arrays)
    return tuple(outs[: op.n_out]) if op.n_out > 1 else outs[0]


def while_loop(cond: Callable, body: Callable, state: Any, traceable: bool = False) -> Any:
    """A Python loop; a ``traceable`` one (its state a flat tuple of tensors), while
    ``torch.compile`` traces, PyTorch's ``while_loop`` operator (one graph), its state packed by
    :func:`_packed`."""
    if traceable and torch.compiler.is_compiling():
        from torch._higher_order_ops.while_loop import while_loop as traced_loop

        pack, unpack = _packed(state)

        def traced_body(*flat: Any) -> tuple:  # (it refuses a tensor passed through as is)
            out = pack(body(unpack(flat)))
            return tuple(o.clone() if any(o is i for i in flat) else o for o in out)

        def traced_cond(*flat: Any) -> torch.Tensor:  # a fresh 0-d flag, never a view of the state
            return cond(unpack(flat)).clone()

        return unpack(traced_loop(traced_cond, traced_body, pack(state)))
    if torch.compiler.is_compiling():  # (fullgraph=True: an error that says why)
        torch._dynamo.graph_break(msg=_UNTRACED_LOOP)
    flag = cond(state)
    while values_known(flag):
        if not bool(flag):
            return state
        state = body(state)
        flag = cond(state)
    return _masked_loop(cond, body, state, flag)


def _masked_loop(cond: Callable, body: Callable, state: Any, flag: torch.Tensor) -> Any:
    """The loop under ``torch.func.vmap``, where ``flag`` holds one value per batch entry:
    ``lax.while_loop``'s batching rule, the body runs while any entry's flag holds and an entry
    whose flag is False keeps its state."""
    while bool(_physical(flag).any()):
        new = body(state)
        state = torch_pytree.tree_map(lambda n, s, f=flag: torch.where(f, n, s) if isinstance(n, torch.Tensor) else n, new, state)
        flag = cond(state)
    return state


def _physical(x: torch.Tensor) -> torch.Tensor:
    """``x`` without its ``torch.func`` wrappers: every batch entry's values."""
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return x


_UNTRACED_LOOP = (
    "this softk operator's solver loop is not traced by torch.compile (those of soft_topk, soft_topp, "
    "sinkhorn, sinkhorn_cost, sinkhorn_plan and ot_transfer_loss are; see docs/gradients.md): it runs "
    "eagerly at a graph break, which fullgraph=True refuses. Compile without fullgraph=True, or call the "
    "operator outside the compiled function."
)


def _packed(state: tuple) -> tuple[Callable, Callable]:
    """``(pack, unpack)`` between a loop state's tensors and the ``while_loop`` operator's carries:
    tensors of one shape, dtype and device travel stacked as one carry. The compiled loop clones
    every carry when the body does not run (a few us each on small inputs, as much as a Newton
    step), and stacking in the graph is fused; no carry appears twice (the operator refuses that)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(state):
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
    members = list(groups.values())

    def pack(tensors: tuple) -> tuple:
        carries = [torch.stack([tensors[i] for i in g]) if len(g) > 1 else tensors[g[0]] for g in members]
        return tuple(t.clone() if any(t is u for u in carries[:i]) else t for i, t in enumerate(carries))

    def unpack(carries: tuple) -> tuple:
        tensors = [None] * len(state)
        for carry, g in zip(carries, members):
            for j, i in enumerate(g):
                tensors[i] = carry[j] if len(g) > 1 else carry
        return tuple(tensors)

    return pack, unpack


@torch.compiler.disable  # under torch.compile: a graph break, the host code runs on real tensors
def host_call(fn: Callable[..., tuple], outputs: tuple, *arrays: torch.Tensor) -> tuple:
    """``fn(*arrays)`` eagerly (see :func:`softk._dispatch.host_call`); ``fullgraph=True`` refuses it.
    Under ``torch.func.vmap`` ``fn`` runs once per batch entry, as JAX's glue does."""
    return _HostCall.apply(fn, *arrays)


class _HostCall(torch.autograd.Function):
    """:func:`host_call`'s function, with outputs that are constants to autograd and a
    ``torch.func.vmap`` rule that calls it once per batch entry (its code reads values)."""

    @staticmethod
    def forward(fn: Callable[..., tuple], *arrays: torch.Tensor) -> tuple:
        return tuple(fn(*arrays))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx: Any, *_: Any) -> tuple:
        return (None,) * (1 + len(ctx.needs_input_grad[1:]))

    @staticmethod
    def vmap(info: Any, in_dims: tuple, fn: Callable[..., tuple], *arrays: torch.Tensor) -> tuple:
        entries = [
            _HostCall.apply(fn, *(a if d is None else a.select(d, i) for a, d in zip(arrays, in_dims[1:])))
            for i in range(info.batch_size)
        ]
        outs = tuple(torch.stack(column) for column in zip(*entries))
        return outs, (0,) * len(outs)


def values_known(x: Any) -> bool:
    """False while compiling or inside ``torch.func.vmap`` (values are per-sample there)."""
    if torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(x):
        if functorch.is_batchedtensor(x):
            return False
        x = functorch.get_unwrapped(x)
    return True


def on_false(flag: torch.Tensor, action: Callable[[], None]) -> None:
    if values_known(flag) and not bool(flag):
        action()


def warn_unread(flag: torch.Tensor, what: str, tol: float | None, rounding: float | None) -> bool:
    """Where the core cannot read the 0-d ``flag`` itself, warn from here and return True: while
    ``torch.compile`` traces, through ``softk::warn_unless`` in the graph (a plain Python call
    there is dropped: Dynamo keeps no side effect of an ``autograd.Function``'s forward); under
    ``torch.func.vmap``, from every batch entry's flag (one warning if any stops short).
    Otherwise False (the caller reads the flag itself)."""
    if torch.compiler.is_compiling():
        if _EFFECTFUL:
            torch.ops.softk.warn_unless(flag, what, tol, rounding)
        return _EFFECTFUL
    if values_known(flag):
        return False
    _warn_unless(_physical(flag).all(), what, tol, rounding)
    return True


def _warn_unless(flag: torch.Tensor, what: str, tol: float | None, rounding: float | None) -> None:
    """softk's :class:`NotConvergedWarning` for solver ``what`` when ``flag`` is False (compiled
    code, or every batch entry's flag under ``torch.func.vmap``)."""
    if not bool(flag):
        warn_not_converged(what, None, tol, rounding)


def check_unread(x: torch.Tensor, name: str) -> None:
    """softk's NaN and infinity check of argument ``x`` where the core cannot read its values:
    while ``torch.compile`` traces, ``softk::require_finite`` in the graph (the compiled call
    raises softk's ``ValueError`` when it runs); under ``torch.func.vmap``, on every batch
    entry's values."""
    if torch.compiler.is_compiling():
        if _EFFECTFUL:
            torch.ops.softk.require_finite(torch.sum(x), x, name)  # the sum is fused into the graph's kernels
    elif not values_known(x):
        check_finite_values(xp, name, _physical(x))


def _require_finite(total: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """softk's check of argument ``name`` for NaN and infinite values, from compiled code: one
    scalar read (a sum propagates NaN and inf), the full check only where it is not finite."""
    if not math.isfinite(total.item()):
        check_finite_values(xp, name, x)


# The two operators above, as PyTorch operators that compiled code calls. Defined on a plain
# ``torch.library.Library`` (not ``torch.library.custom_op``, whose Python autograd and dispatch
# wrappers cost ~14 us per call against ~2 us here, on every compiled call).
_LIBRARY = torch.library.Library("softk", "FRAGMENT")
_SCHEMAS = {
    "warn_unless": ("(Tensor flag, str what, float? tol, float? rounding) -> ()", _warn_unless),
    "require_finite": ("(Tensor total, Tensor x, str name) -> ()", _require_finite),
}
for _name, (_schema, _impl) in _SCHEMAS.items():
    _LIBRARY.define(_name + _schema)
    _LIBRARY.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"softk::{_name}", lambda *args: None, lib=_LIBRARY)


def _register_effect() -> bool:
    """Mark ``softk::warn_unless`` and ``softk::require_finite`` as having an effect, so the
    compiler keeps them (an op without outputs is otherwise dead code). A private PyTorch API:
    where it is missing, compiled code neither warns nor checks values."""
    try:
        from torch._library.effects import EffectType

        for name in _SCHEMAS:
            torch.library._register_effectful_op(f"softk::{name}", EffectType.ORDERED)
    except (ImportError, AttributeError):
        return False
    return True


_EFFECTFUL = _register_effect()


def accepts_out(*arrays: Any) -> bool:
    """Whether ``out=`` may write these tensors: none recorded by autograd (grad mode on and
    requiring a gradient) or batched by ``torch.func`` or ``jacobian(vectorize=True)`` (their
    batching and gradient rules reject ``out=``), and not compiling."""
    if torch.compiler.is_compiling():
        return False
    functorch, recording = torch._C._functorch, torch.is_grad_enabled()

    def wrapped(a: torch.Tensor) -> bool:  # torch.func, or the batched gradients of jacobian(vectorize=True)
        return functorch.is_functorch_wrapped_tensor(a) or functorch.is_legacy_batchedtensor(a)

    return not any(isinstance(a, torch.Tensor) and ((recording and a.requires_grad) or wrapped(a)) for a in arrays)


def _register_pytrees() -> None:
    """Register the core's result types (:func:`softk._op.pytree`) with ``torch.utils._pytree``."""
    for cls, children, static in PYTREES:
        if cls in torch_pytree.SUPPORTED_NODES:
            continue
        torch_pytree.register_pytree_node(
            cls,
            lambda obj, children=children, static=static: ([getattr(obj, n) for n in children], tuple(getattr(obj, n) for n in static)),
            lambda values, aux, cls=cls, children=children, static=static: cls(**dict(zip(children, values)), **dict(zip(static, aux))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )


_register_pytrees()

# Dynamo notes each call of a functools.lru_cache-wrapped function it traces through; the ones in
# softk's calls are array_api_compat's type checks (which namespace an array belongs to), pure
# functions of a type: about 40 such notes per compiled softk call, none of them actionable.
warnings.filterwarnings(
    "ignore", message=r"Dynamo detected a call to a `functools\.lru_cache`-wrapped function at '(_helpers|_dispatch|_xp)\.py", category=UserWarning
)
