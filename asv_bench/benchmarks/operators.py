"""asv benchmarks: every public softk operator on every installed backend.

Two classes per operator, ``<Operator>Forward`` and
``<Operator>ForwardBackward``, with the parameters ``backend`` x ``n`` (three
sizes, one per order of magnitude) and three benchmarks between them:

* ``time_forward``: one call (JAX: ``jax.jit``-compiled in ``setup``);
* ``time_forward_backward``: value and VJP with a fixed random cotangent:
  ``out.backward(v)`` (PyTorch), ``jax.jit(jax.grad(vdot(f(x), v)))`` (JAX),
  ``softk.vjp`` + pullback (NumPy, CuPy; not for the composite
  ``sinkhorn_divergence`` and ``beam_search``, whose gradients come from the
  framework's autograd);
* ``peakmem_forward_backward``: asv's peak resident memory of the process
  running one forward + backward (imports and inputs included).

Cases that cannot run raise ``NotImplementedError`` in ``setup`` (asv shows
``n/a``): a backend that is not installed, CuPy without a GPU, NumPy
gradients of a composite operator.

Inputs (seed 0): scores are float32 standard normal, batch 8 (32 for
``soft_topk``); point clouds are float64 uniform in the unit square.

==================  ======================================  =================
operator            call                                     n
==================  ======================================  =================
SoftTopk            ``soft_topk(x, 10, epsilon=0.1)``        1e3, 1e4, 1e5
SoftTopp            ``soft_topp(x, 0.9, epsilon=0.1)``       1e3, 1e4, 1e5
SoftTopkSorted      ``soft_topk_sorted(x, 16, epsilon=1e-2)`` 1e2, 1e3, 1e4
SoftSort            ``soft_sort(x, epsilon=1e-2)`` (m = n)   10, 100, 1000
SoftRank            ``soft_rank(x, epsilon=1e-2)`` (m = n)   10, 100, 1000
SoftQuantile        ``soft_quantile(x, [.25, .5, .75])``     1e2, 1e3, 1e4
Sinkhorn            ``sinkhorn_cost(x=x, y=y, epsilon=1e-2)`` 10, 100, 1000
SinkhornPlan        ``sinkhorn_plan(x=x, y=y, epsilon=1e-2)`` 10, 100, 1000
SinkhornApply       ``sinkhorn_apply(..., v)``, v (n, 4)     10, 100, 1000
SinkhornDivergence  ``sinkhorn_divergence(x, y, epsilon=1e-2)`` 10, 100, 1000
BeamSearch          ``beam_search`` on a bigram table, V     10, 100, 1000
==================  ======================================  =================

``BeamSearch``: batch 8, beam ``k = 4``, ``length = 8``, ``epsilon = 1e-2``,
a random (V, V) log-probability table; the gradient is taken with respect to
the table. ``python asv_bench/benchmarks/operators.py [backend]`` times every
case once, in one process.
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import numpy as np

import softk

try:  # softk.soft_topp once exported; older commits lack it
    from softk.topp import soft_topp
except ImportError:  # pragma: no cover - depends on the commit benchmarked
    soft_topp = None

BACKENDS = ["numpy", "torch", "jax", "cupy"]
_CACHE: dict = {}


def _module(name: str):
    """The framework module, or ``NotImplementedError`` (asv: n/a) where it cannot run."""
    if importlib.util.find_spec(name) is None:
        raise NotImplementedError(f"{name} is not installed")
    if name == "torch":
        import torch

        return torch
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # the OT cases run in float64
        return jax
    if name == "cupy":
        try:
            import cupy

            usable = bool(cupy.is_available())
        except Exception:  # CuPy imports without a GPU but cannot run
            usable = False
        if not usable:
            raise NotImplementedError("cupy: no usable GPU")
        return cupy
    return np


def _scores(batch: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, n), dtype=np.float32)


def _clouds(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 2)), rng.random((n, 2))


def _bigram_start(v: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(v, v))
    table = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    start = np.broadcast_to(table[0], (8, v)).copy()
    return table, start


def _beam(table, start):
    def step(tokens, state):
        lp = state if tokens is None else tokens @ table
        return lp, lp

    return softk.beam_search(step, start, 4, 8, epsilon=1e-2).scores


# name -> (inputs(n) -> (differentiated arrays, other arrays), call(*arrays) -> array, numpy VJP allowed)
CASES = {
    "soft_topk": (lambda n: ((_scores(32, n),), ()), lambda x: softk.soft_topk(x, 10, epsilon=0.1), True),
    "soft_topp": (lambda n: ((_scores(32, n),), ()), lambda x: soft_topp(x, 0.9, epsilon=0.1), True),
    "soft_topk_sorted": (lambda n: ((_scores(8, n),), ()), lambda x: softk.soft_topk_sorted(x, 16, epsilon=1e-2), True),
    "soft_sort": (lambda n: ((_scores(8, n),), ()), lambda x: softk.soft_sort(x, epsilon=1e-2), True),
    "soft_rank": (lambda n: ((_scores(8, n),), ()), lambda x: softk.soft_rank(x, epsilon=1e-2), True),
    "soft_quantile": (
        lambda n: ((_scores(8, n),), ()),
        lambda x: softk.soft_quantile(x, [0.25, 0.5, 0.75], epsilon=1e-2),
        True,
    ),
    "sinkhorn": (lambda n: (_clouds(n), ()), lambda x, y: softk.sinkhorn_cost(x=x, y=y, epsilon=1e-2), True),
    "sinkhorn_plan": (lambda n: (_clouds(n), ()), lambda x, y: softk.sinkhorn_plan(x=x, y=y, epsilon=1e-2), True),
    "sinkhorn_apply": (
        lambda n: (_clouds(n), (np.random.default_rng(1).normal(size=(n, 4)),)),
        lambda x, y, v: softk.sinkhorn_apply(x=x, y=y, v=v, epsilon=1e-2),
        True,
    ),
    "sinkhorn_divergence": (
        lambda n: (_clouds(n), ()),
        lambda x, y: softk.sinkhorn_divergence(x, y, epsilon=1e-2),
        False,
    ),
    "beam_search": (lambda n: (lambda table, start: ((table,), (start,)))(*_bigram_start(n)), _beam, False),
}
SIZES = {
    "soft_topk": [1_000, 10_000, 100_000],
    "soft_topp": [1_000, 10_000, 100_000],
    "soft_topk_sorted": [100, 1_000, 10_000],
    "soft_sort": [10, 100, 1_000],
    "soft_rank": [10, 100, 1_000],
    "soft_quantile": [100, 1_000, 10_000],
    "sinkhorn": [10, 100, 1_000],
    "sinkhorn_plan": [10, 100, 1_000],
    "sinkhorn_apply": [10, 100, 1_000],
    "sinkhorn_divergence": [10, 100, 1_000],
    "beam_search": [10, 100, 1_000],
}


def _numpy_vjp_fn(name: str):
    """The softk operator whose pullback ``softk.vjp`` takes, with positional array arguments."""
    return {
        "soft_topk": (softk.soft_topk, lambda x: ((x, 10), dict(epsilon=0.1))),
        "soft_topp": (soft_topp, lambda x: ((x, 0.9), dict(epsilon=0.1))),
        "soft_topk_sorted": (softk.soft_topk_sorted, lambda x: ((x, 16), dict(epsilon=1e-2))),
        "soft_sort": (softk.soft_sort, lambda x: ((x,), dict(epsilon=1e-2))),
        "soft_rank": (softk.soft_rank, lambda x: ((x,), dict(epsilon=1e-2))),
        "soft_quantile": (softk.soft_quantile, lambda x: ((x, [0.25, 0.5, 0.75]), dict(epsilon=1e-2))),
        "sinkhorn": (softk.sinkhorn_cost, lambda x, y: ((), dict(x=x, y=y, epsilon=1e-2))),
        "sinkhorn_plan": (softk.sinkhorn_plan, lambda x, y: ((), dict(x=x, y=y, epsilon=1e-2))),
        "sinkhorn_apply": (softk.sinkhorn_apply, lambda x, y, v: ((), dict(x=x, y=y, v=v, epsilon=1e-2))),
    }[name]


def build(name: str, backend: str, n: int, backward: bool):
    """A zero-argument callable doing one blocking call, or ``NotImplementedError``."""
    if name == "soft_topp" and soft_topp is None:
        raise NotImplementedError("this commit has no soft_topp")
    inputs, call, numpy_grad = CASES[name]
    diff_np, other_np = inputs(n)
    out_np = call(*diff_np, *other_np)
    v_np = np.random.default_rng(2).normal(size=np.shape(out_np)).astype(np.asarray(out_np).dtype)
    mod = _module(backend)

    if backend in ("numpy", "cupy"):
        xp = np if backend == "numpy" else mod
        diff, other, v = [xp.asarray(a) for a in diff_np], [xp.asarray(a) for a in other_np], xp.asarray(v_np)
        sync = (lambda: None) if backend == "numpy" else mod.cuda.Device().synchronize
        if not backward:
            return lambda: (call(*diff, *other), sync())
        if not numpy_grad:
            raise NotImplementedError(f"{name}: composite operator, gradients through torch/jax autograd only")
        fn, split = _numpy_vjp_fn(name)
        args, kwargs = split(*diff, *other)

        def numpy_fwd_bwd():
            _, pullback = softk.vjp(fn, *args, **kwargs)
            grads = pullback(v)
            sync()
            return grads

        return numpy_fwd_bwd

    if backend == "torch":
        torch = mod
        diff, other, v = [torch.asarray(a) for a in diff_np], [torch.asarray(a) for a in other_np], torch.asarray(v_np)
        if not backward:
            return lambda: call(*diff, *other)
        leaves = [a.clone().requires_grad_(True) for a in diff]

        def torch_fwd_bwd():
            call(*leaves, *other).backward(v)
            grads = [leaf.grad for leaf in leaves]
            for leaf in leaves:
                leaf.grad = None
            return grads

        return torch_fwd_bwd

    jax = mod
    import jax.numpy as jnp

    diff, other, v = [jnp.asarray(a) for a in diff_np], [jnp.asarray(a) for a in other_np], jnp.asarray(v_np)
    if not backward:
        compiled = jax.jit(call).lower(*diff, *other).compile()
        return lambda: jax.block_until_ready(compiled(*diff, *other))
    argnums = tuple(range(len(diff)))
    grad = jax.grad(lambda *a: jnp.vdot(call(*a), v), argnums=argnums)
    compiled = jax.jit(grad).lower(*diff, *other).compile()
    return lambda: jax.block_until_ready(compiled(*diff, *other))


def prepared(name: str, backend: str, n: int, backward: bool):
    """``build``, warmed up once, cached per process (asv calls ``setup`` before every sample)."""
    key = (name, backend, n, backward)
    if key not in _CACHE:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", softk.NotConvergedWarning)
                call = build(name, backend, n, backward)
                call()
        except NotImplementedError as exc:
            call = exc
        _CACHE[key] = call
    if isinstance(_CACHE[key], NotImplementedError):
        raise _CACHE[key]
    return _CACHE[key]


class _Timing:
    param_names = ["backend", "n"]
    number = 0  # asv picks the number of calls per sample
    repeat = (1, 5, 2.0)  # 1 to 5 samples, stop after about 2 s
    rounds = 1
    warmup_time = 0.0  # setup already made one call (and compiled under JAX)
    timeout = 300.0


class _Forward(_Timing):
    name = ""

    def setup(self, backend, n):
        self.call = prepared(self.name, backend, n, backward=False)

    def time_forward(self, backend, n):
        self.call()


class _ForwardBackward(_Timing):
    name = ""

    def setup(self, backend, n):
        self.call = prepared(self.name, backend, n, backward=True)

    def time_forward_backward(self, backend, n):
        self.call()

    def peakmem_forward_backward(self, backend, n):
        self.call()


def _classes(name: str) -> tuple[type, type]:
    """``<Name>Forward`` and ``<Name>ForwardBackward`` for operator ``name``."""
    stem = "".join(part.capitalize() for part in name.split("_"))
    sizes = ", ".join(map(str, SIZES[name]))
    return tuple(
        type(f"{stem}{suffix}", (base,), dict(name=name, params=(BACKENDS, SIZES[name]),
                                               __doc__=f"``softk.{name}``, {what} (n in {sizes})."))
        for suffix, base, what in (("Forward", _Forward, "forward"),
                                   ("ForwardBackward", _ForwardBackward, "forward + backward and peak memory"))
    )


SoftTopkForward, SoftTopkForwardBackward = _classes("soft_topk")
SoftToppForward, SoftToppForwardBackward = _classes("soft_topp")
SoftTopkSortedForward, SoftTopkSortedForwardBackward = _classes("soft_topk_sorted")
SoftSortForward, SoftSortForwardBackward = _classes("soft_sort")
SoftRankForward, SoftRankForwardBackward = _classes("soft_rank")
SoftQuantileForward, SoftQuantileForwardBackward = _classes("soft_quantile")
SinkhornForward, SinkhornForwardBackward = _classes("sinkhorn")
SinkhornPlanForward, SinkhornPlanForwardBackward = _classes("sinkhorn_plan")
SinkhornApplyForward, SinkhornApplyForwardBackward = _classes("sinkhorn_apply")
SinkhornDivergenceForward, SinkhornDivergenceForwardBackward = _classes("sinkhorn_divergence")
BeamSearchForward, BeamSearchForwardBackward = _classes("beam_search")


def main(backends: list[str]) -> None:
    print(f"{'operator':<22}{'backend':<8}{'n':>8}{'forward ms':>13}{'fwd+bwd ms':>13}")
    for name in CASES:
        for backend in backends:
            for n in SIZES[name]:
                row = []
                for backward in (False, True):
                    try:
                        call = prepared(name, backend, n, backward)
                    except NotImplementedError:
                        row.append("n/a")
                        continue
                    start = time.perf_counter()
                    call()
                    row.append(f"{1e3 * (time.perf_counter() - start):.2f}")
                print(f"{name:<22}{backend:<8}{n:>8}{row[0]:>13}{row[1]:>13}", flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:] or ["numpy", "torch", "jax"])
