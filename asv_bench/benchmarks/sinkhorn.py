"""asv benchmarks: ``softk.sinkhorn`` against POT's ``ot.sinkhorn``, in the same classes.

Problem: two uniform clouds of ``n`` points in the unit square (seed 0),
squared Euclidean cost divided by its maximum, uniform weights, float64,
``epsilon = 1e-3``, row-marginal tolerance ``1e-6``.

Parameters ``backend`` (numpy, torch) x ``impl`` x ``n``:

* ``impl="softk"``: ``softk.sinkhorn(C, epsilon=eps, tol=1e-6)`` (epsilon
  scaling, absorption-stabilised over-relaxed kernel iterations); forward +
  backward is the gradient of the regularised cost w.r.t. ``C`` (``P``, by the
  envelope theorem: ``.cost.backward()`` on PyTorch, ``softk.vjp`` on NumPy).
* ``impl="pot_log"``: ``ot.sinkhorn(a, b, C, eps, method="sinkhorn_log",
  stopThr=1e-6, numItermax=100000)`` (its stopping test is on the column
  marginals, checked every 10 iterations: the same kind of test).
* ``impl="pot"``: ``ot.sinkhorn(..., method="sinkhorn")`` (kernel mode: at this
  epsilon its kernel underflows; ``track_marginal_error`` shows the result).

POT has no forward + backward without unrolling (its autodiff through 10^4
iterations would need tens of GB here), so that case is skipped for POT.
``track_peak_mb`` is the net peak memory of one forward + backward (softk) or
forward (POT) above the resident set before the call, in MB (peak RSS growth
of a forked child that runs the call).

``SinkhornOnline``: the online solver (``online=True``, cost blocks computed
on the fly) on ``n = m = 3000`` uniform points in the unit cube (3-D, seed 0),
unnormalised squared Euclidean cost (<= 3), ``epsilon = 1e-2``, float64:
``time_forward`` (solve + value), ``time_apply`` (``P @ v`` for ``v`` of shape
(m, 4), blockwise, at solved potentials) and ``track_peak_mb`` (solve + apply).

Run ``python asv_bench/benchmarks/sinkhorn.py [n]`` for the same comparison
as one table, all cases in one process; ``asv_bench/compare_sinkhorn.py``
measures each case in its own process (and the 50,000-point online run).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
import warnings

import numpy as np

import softk
from softk import sinkhorn, sinkhorn_cost

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

try:
    import ot
except ImportError:  # pragma: no cover
    ot = None

EPSILON = 1e-3
TOL = 1e-6
_CACHE: dict = {}


def cost_matrix(n: int) -> np.ndarray:
    if n not in _CACHE:
        rng = np.random.default_rng(0)
        x, y = rng.random((n, 2)), rng.random((n, 2))
        c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        _CACHE[n] = c / c.max()
    return _CACHE[n]


def make_case(backend: str, impl: str, n: int):
    """``(forward, forward_backward or None, row_error)`` closures for one case."""
    c = cost_matrix(n)
    if backend == "torch":
        if torch is None:
            raise NotImplementedError("torch not installed")
        c = torch.asarray(c)
    if impl == "softk":
        if backend == "torch":
            def fwd():
                return sinkhorn(c, epsilon=EPSILON, tol=TOL).cost

            def fwd_bwd():
                leaf = c.clone().requires_grad_(True)
                sinkhorn(leaf, epsilon=EPSILON, tol=TOL).cost.backward()
                return leaf.grad
        else:
            def fwd():
                return sinkhorn(c, epsilon=EPSILON, tol=TOL).cost

            def fwd_bwd():
                _, pullback = softk.vjp(sinkhorn_cost, c, epsilon=EPSILON, tol=TOL)
                return pullback(np.ones(()))[0]

        def plan():
            return sinkhorn(c, epsilon=EPSILON, tol=TOL).plan
        return fwd, fwd_bwd, plan
    if ot is None:
        raise NotImplementedError("POT not installed (pip install pot)")
    w = np.full(n, 1.0 / n)
    a = torch.asarray(w) if backend == "torch" else w
    method = "sinkhorn_log" if impl == "pot_log" else "sinkhorn"

    def pot_plan():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ot.sinkhorn(a, a, c, EPSILON, method=method, stopThr=TOL, numItermax=100_000)
    return pot_plan, None, pot_plan


def row_error(plan) -> float:
    p = plan.detach().numpy() if hasattr(plan, "detach") else np.asarray(plan)
    return float(np.abs(p.sum(1) - 1.0 / p.shape[0]).sum())


def peak_mb(fn) -> float:
    """Net peak memory of ``fn()`` in MB (see :func:`measure`)."""
    return measure(fn)[1]


def measure(fn, after=None) -> tuple[float, float, float]:
    """``(seconds, peak MB, after(result))`` of ``fn()`` run once in a forked child.

    The peak is the child's peak RSS growth above its resident set at the
    start (the parent's arrays are shared, not counted); it sees NumPy and
    PyTorch allocations alike.
    """
    gc.collect()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        before = _rss_kb()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        extra = after(out) if after is not None else float("nan")
        os.write(write, f"{seconds} {grown / 1024} {extra}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        fields = pipe.read().split()
    os.waitpid(pid, 0)
    return tuple(float(v) for v in fields) if len(fields) == 3 else (float("nan"),) * 3


def _rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class Sinkhorn:
    params = (["numpy", "torch"], ["softk", "pot_log", "pot"], [500, 2000])
    param_names = ["backend", "impl", "n"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, backend, impl, n):
        self.fwd, self.fwd_bwd, self.plan = make_case(backend, impl, n)

    def time_forward(self, backend, impl, n):
        self.fwd()

    def track_marginal_error(self, backend, impl, n):
        return row_error(self.plan())

    def track_peak_mb(self, backend, impl, n):
        return peak_mb(self.fwd_bwd or self.fwd)


class SinkhornGradient:
    """Forward + backward; skipped for POT in ``setup`` (it differentiates only by unrolling)."""

    params = Sinkhorn.params
    param_names = Sinkhorn.param_names
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, backend, impl, n):
        _, self.fwd_bwd, _ = make_case(backend, impl, n)
        if self.fwd_bwd is None:
            raise NotImplementedError("POT differentiates only by unrolling its iterations")

    def time_forward_backward(self, backend, impl, n):
        self.fwd_bwd()


class SinkhornOnline:
    params = (["numpy", "torch"], [3000])
    param_names = ["backend", "n"]
    timeout = 600
    number = 1
    repeat = 1

    def setup(self, backend, n):
        rng = np.random.default_rng(0)
        x, y, v = rng.random((n, 3)), rng.random((n, 3)), rng.normal(size=(n, 4))
        if backend == "torch":
            if torch is None:
                raise NotImplementedError("torch not installed")
            x, y, v = torch.asarray(x), torch.asarray(y), torch.asarray(v)
        self.x, self.y, self.v = x, y, v
        self.out = sinkhorn(x=x, y=y, epsilon=1e-2, tol=TOL, online=True)

    def solve(self):
        return sinkhorn(x=self.x, y=self.y, epsilon=1e-2, tol=TOL, online=True)

    def time_forward(self, backend, n):
        return self.solve().cost

    def time_apply(self, backend, n):
        self.out.apply(self.v)

    def track_peak_mb(self, backend, n):
        return peak_mb(lambda: self.solve().apply(self.v))


def main(n: int) -> None:
    print(f"n = m = {n}, 2-D uniform clouds, cost / max, eps = {EPSILON}, tol = {TOL}, float64")
    print(f"{'backend':8} {'impl':8} {'forward s':>10} {'fwd+bwd s':>10} {'row err':>9} {'fwd MB':>7} {'f+b MB':>7}")
    for backend in ("numpy", "torch"):
        for impl in ("softk", "pot_log", "pot"):
            try:
                fwd, fwd_bwd, plan = make_case(backend, impl, n)
            except NotImplementedError as e:
                print(f"{backend:8} {impl:8} skipped: {e}")
                continue
            # POT's forward returns the plan; softk's row error is read off its plan property
            check = row_error if impl != "softk" else (lambda _, plan=plan: row_error(plan()))
            t_fwd, mb_fwd, err = measure(fwd, check)
            t_bwd, mb_bwd, _ = measure(fwd_bwd) if fwd_bwd is not None else (float("nan"),) * 3
            print(f"{backend:8} {impl:8} {t_fwd:10.3f} {t_bwd:10.3f} {err:9.1e} {mb_fwd:7.0f} {mb_bwd:7.0f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
