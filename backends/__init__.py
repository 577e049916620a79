"""Per-framework glue, installed as ``softk.backends``: nothing numerical lives here.

Each module exposes the same four functions, looked up by
:func:`softk._dispatch.glue_for`:

* ``apply(op, arrays, params)``: run a :class:`softk._op.CoreOp` so that the
  framework's own autograd calls ``op.backward`` (no unrolling);
* ``while_loop(cond, body, state)``: the framework's data-dependent loop;
* ``values_known(x)``: whether ``x`` holds concrete values (not a tracer);
* ``on_false(flag, action)``: call ``action()`` when the 0-d ``flag`` is False
  (a solver's ``converged``), at once or, under JAX, at run time.

A glue module may also offer ``top_values(x, k, largest)`` where the library's
namespace has no fast partial sort (JAX: ``lax.top_k``), and PyTorch's offers
``accepts_out(*arrays)``: whether ``out=`` may write them (not under autograd,
``torch.func`` or ``torch.compile``), ``warn_unread(flag, what, tol, rounding)``
(where the core cannot read a solver's ``converged``: under ``torch.compile`` an
operator in the graph that raises the ``NotConvergedWarning`` at run time, a
Python call there being dropped; under ``torch.func.vmap`` every batch entry's
flag) and ``check_unread(x, name)`` (the same for the NaN/inf check of an argument).
``host_call(fn, outputs, *arrays)`` runs host code on concrete values (JAX:
``jax.pure_callback``, so also under ``jit``); without it,
:func:`softk._dispatch.host_call` calls ``fn`` directly where values are known.
"""
