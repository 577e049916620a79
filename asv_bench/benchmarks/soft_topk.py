"""asv benchmarks: ``softk.soft_topk`` against the peers, in the same classes.

Every timing class has the parameters ``backend`` x ``impl`` x ``n`` x ``epsilon``:

* ``impl="softk"``: ``softk.soft_topk(x, k=10, epsilon=epsilon)`` (``method="exact"``).
* ``impl="peer"``: the usual alternative on that backend:

  - ``numpy``: ``np.argpartition`` (hard top-k, forward only);
  - ``torch``: ``torch.topk`` (hard top-k, forward only);
  - ``jax``: OTT-JAX ``ott.tools.soft_sort.topk_mask(x, k=10, epsilon=epsilon)`` under
    ``jax.jit`` (forward and forward + backward), when ``ott`` is importable.

Inputs are float32 standard normal, shape ``(32, n)`` (``(8, n)`` for
``n = 1e6``). JAX functions are jitted (compiled in ``setup``) and timed up to
``block_until_ready``. Forward + backward is ``a.backward(v)`` (PyTorch),
``jax.jit(jax.grad(lambda x, v: vdot(f(x), v)))`` (JAX) and
``softk.vjp`` + pullback (NumPy), with a random cotangent ``v``.

Peer cases that cannot be timed raise ``NotImplementedError`` in ``setup`` (asv
shows them as skipped / n/a), with the reason as the message:

* hard top-k peers have no soft gradient (no forward + backward);
* OTT is only run for ``n <= 1e5``; at ``n = 1e5, epsilon = 1e-3`` its forward +
  backward is skipped too (about 11 s per call with its default implicit
  backward, whose gradient is NaN, and about 35 s unrolled, also NaN, on a
  quiet 2-core CPU). ``../compare_peers.py`` measures those cases once.
* OTT forward + backward first uses OTT's defaults (implicit differentiation);
  if that raises or gives a non-finite gradient, it is retried with
  ``implicit_diff=None`` (unrolled Sinkhorn); if that is non-finite too, the
  case is skipped and the message says so.

``PeakMemTorch`` shows that softk's PyTorch forward + backward memory is O(n):
asv's ``peakmem_`` (the whole process, imports included) and a ``track_`` of the
net peak above the resident set before the call, in bytes and per input element.
"""

from __future__ import annotations

import gc
import logging
import re
import resource
import warnings

import numpy as np

import softk

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

try:
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover
    jax = jnp = None

try:
    from ott.tools import soft_sort as ott_soft_sort
except Exception:  # pragma: no cover - ott missing or broken
    ott_soft_sort = None

# OTT's implicit backward fails inside a jax.pure_callback, which logs a long
# traceback before the error reaches us: keep the benchmark log readable.
logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)

K = 10
NS = [1_000, 10_000, 100_000, 1_000_000]
EPSILONS = [0.1, 1e-3]
BACKENDS = ["numpy", "torch", "jax"]
IMPLS = ["softk", "peer"]

OTT_MAX_N = 100_000
# (n, epsilon) where OTT's forward + backward takes tens of seconds per call here.
OTT_SLOW_BACKWARD = {(100_000, 1e-3)}

# Built once per benchmark process: asv re-runs ``setup`` before every sample.
_CACHE: dict = {}


def batch_for(n: int) -> int:
    return 8 if n >= 1_000_000 else 32


def _numpy_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    key = ("data", n)
    if key not in _CACHE:
        rng = np.random.default_rng(0)
        shape = (batch_for(n), n)
        _CACHE[key] = (
            rng.standard_normal(shape, dtype=np.float32),
            rng.standard_normal(shape, dtype=np.float32),
        )
    return _CACHE[key]


def _skip(message: str):
    raise NotImplementedError(message)


def _is_finite(a) -> bool:
    return bool(np.all(np.isfinite(np.asarray(a))))


def _ott_error(exc: BaseException) -> str:
    """The informative sentence of an OTT/lineax run-time error."""
    text = str(exc)
    found = re.search(r"EquinoxRuntimeError:\s*(.*?\.)(\s|$)", text, flags=re.DOTALL)
    if found:
        return " ".join(found.group(1).split())
    return " ".join(text.split())[:200] if text else type(exc).__name__


def _build(backend: str, impl: str, n: int, epsilon: float, backward: bool):
    """A zero-argument callable doing one (blocking) call, or NotImplementedError."""
    x_np, v_np = _numpy_data(n)

    if backend == "numpy":
        if impl == "softk":
            if not backward:
                return lambda: softk.soft_topk(x_np, K, epsilon=epsilon)

            def fwd_bwd():
                _, pullback = softk.vjp(softk.soft_topk, x_np, K, epsilon=epsilon)
                return pullback(v_np)[0]

            return fwd_bwd
        if backward:
            _skip("np.argpartition is a hard top-k: no gradient")
        return lambda: np.argpartition(x_np, n - K, axis=-1)

    if backend == "torch":
        if torch is None:
            _skip("torch is not installed")
        x = torch.from_numpy(x_np)
        v = torch.from_numpy(v_np)
        if impl == "softk":
            if not backward:
                return lambda: softk.soft_topk(x, K, epsilon=epsilon)
            xr = x.clone().requires_grad_(True)

            def fwd_bwd():
                softk.soft_topk(xr, K, epsilon=epsilon).backward(v)
                grad, xr.grad = xr.grad, None
                return grad

            return fwd_bwd
        if backward:
            _skip("torch.topk is a hard top-k: forward only")
        return lambda: torch.topk(x, K, dim=-1)

    if backend == "jax":
        if jax is None:
            _skip("jax is not installed")
        x = jnp.asarray(x_np)
        v = jnp.asarray(v_np)
        if impl == "softk":
            fn = lambda x: softk.soft_topk(x, K, epsilon=epsilon)  # noqa: E731
        else:
            if ott_soft_sort is None:
                _skip("ott-jax is not installed")
            if n > OTT_MAX_N:
                _skip(f"OTT topk_mask is only benchmarked for n <= {OTT_MAX_N} (too slow above)")
            if backward and (n, epsilon) in OTT_SLOW_BACKWARD:
                _skip(
                    f"OTT topk_mask forward+backward at n={n}, epsilon={epsilon} takes ~11 s (defaults, "
                    "NaN gradient) / ~35 s (implicit_diff=None, NaN gradient) per call: see compare_peers.py"
                )
            fn = lambda x, **kw: ott_soft_sort.topk_mask(x, k=K, epsilon=epsilon, **kw)  # noqa: E731
        if not backward:
            compiled = jax.jit(fn).lower(x).compile()
            return lambda: compiled(x).block_until_ready()

        def jitted_grad(**kw):
            grad = jax.grad(lambda x, v: jnp.vdot(fn(x, **kw), v))
            compiled = jax.jit(grad).lower(x, v).compile()
            return lambda: compiled(x, v).block_until_ready()

        if impl == "softk":
            return jitted_grad()
        # OTT: defaults first (implicit differentiation), then unrolled.
        call = jitted_grad()
        try:
            ok = _is_finite(call())
            why = "non-finite gradient"
        except Exception as exc:  # lineax singular solve, raised at run time
            ok, why = False, f"failed: {_ott_error(exc)}"
        if not ok:
            call = jitted_grad(implicit_diff=None)
            if not _is_finite(call()):
                _skip(f"OTT topk_mask gradient: defaults {why}; implicit_diff=None: non-finite gradient")
            warnings.warn(f"OTT defaults {why}; timing implicit_diff=None instead", stacklevel=1)
        call.warmed = True  # already called once above
        return call

    raise ValueError(backend)


def _prepared(backend, impl, n, epsilon, backward):
    key = (backend, impl, n, epsilon, backward)
    if key not in _CACHE:
        try:
            call = _build(backend, impl, n, epsilon, backward)
            if not getattr(call, "warmed", False):
                call()  # warm up (JAX functions are compiled in _build)
        except NotImplementedError as exc:
            call = exc
        _CACHE[key] = call
    if isinstance(_CACHE[key], NotImplementedError):
        raise _CACHE[key]
    return _CACHE[key]


class _TimeBase:
    params = (BACKENDS, IMPLS, NS, EPSILONS)
    param_names = ["backend", "impl", "n", "epsilon"]
    number = 1
    repeat = (1, 5, 2.0)  # at least 1, at most 5 samples, stop after ~2 s
    rounds = 1
    warmup_time = 0.0  # setup already made one call (and compiled the JAX function)
    timeout = 300.0


class TimeForward(_TimeBase):
    """One forward call: softk vs the backend's peer (batch 32, 8 at n=1e6; float32; k=10)."""

    def setup(self, backend, impl, n, epsilon):
        self.call = _prepared(backend, impl, n, epsilon, backward=False)

    def time_forward(self, backend, impl, n, epsilon):
        self.call()


class TimeForwardBackward(_TimeBase):
    """One forward + backward (VJP with a random cotangent): softk vs OTT (JAX)."""

    def setup(self, backend, impl, n, epsilon):
        self.call = _prepared(backend, impl, n, epsilon, backward=True)

    def time_forward_backward(self, backend, impl, n, epsilon):
        self.call()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _net_peak_bytes(fn) -> float:
    """Peak resident memory during ``fn()`` above the resident memory before it.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) first; where
    that is not allowed, falls back to ``ru_maxrss`` (then only peaks above the
    process's earlier maximum are seen).
    """
    gc.collect()
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        peak = _status_kib("VmHWM")
    except OSError:
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak - before, 0) * 1024.0


class PeakMemTorch:
    """Memory of softk's PyTorch forward + backward (batch 32, float32, k=10, epsilon=0.1).

    ``peakmem_*`` is asv's whole-process peak (imports and inputs included);
    ``peakmem_inputs_only`` is the same setup without the call, for reference.
    ``track_net_peak_*`` is the peak above the resident set just before the call:
    constant bytes per element across n means O(n) memory (no per-iteration tape).
    """

    params = ([100_000, 1_000_000],)
    param_names = ["n"]
    rounds = 1
    timeout = 300.0

    def setup(self, n):
        if torch is None:
            raise NotImplementedError("torch is not installed")
        self.batch = 32
        # One small call first: autograd's first backward allocates ~50 MB once.
        w = torch.ones(2, 1000, requires_grad=True)
        softk.soft_topk(w, K, epsilon=0.1).backward(torch.ones(2, 1000))
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.batch, n, generator=gen).requires_grad_(True)
        self.v = torch.randn(self.batch, n, generator=gen)

    def _fwd_bwd(self):
        softk.soft_topk(self.x, K, epsilon=0.1).backward(self.v)
        self.x.grad = None

    def peakmem_forward_backward(self, n):
        self._fwd_bwd()

    def peakmem_inputs_only(self, n):
        pass

    def track_net_peak_bytes(self, n):
        return _net_peak_bytes(self._fwd_bwd)

    track_net_peak_bytes.unit = "bytes"

    def track_net_peak_bytes_per_element(self, n):
        return _net_peak_bytes(self._fwd_bwd) / (self.batch * n)

    track_net_peak_bytes_per_element.unit = "bytes per input element"
