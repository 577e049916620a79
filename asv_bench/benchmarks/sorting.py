"""asv benchmarks: softk's OT sorting family, against OTT-JAX in the same classes.

``TimeSoftRankSort``: soft ranks / soft sort of a float32 batch 32 x n = 1000
(standard normal scores, seed 0), m = n targets, ``epsilon = 1e-2``, forward +
backward (gradient of ``sum(out * v)``), with parameters ``impl``:

* ``softk_torch``: ``softk.soft_rank`` / ``softk.soft_sort`` on PyTorch
  (kernel-mode Sinkhorn warm-started from the sorted potentials, row-marginal
  tolerance 1e-6, implicit backward by conjugate gradients);
* ``ott``: ``jax.jit(jax.grad(...))`` of ``ott.tools.soft_sort.ranks`` / ``sort``
  with its defaults (Sinkhorn threshold 1e-3, implicit differentiation), compiled
  in ``setup``.

``TimeSortedTopk``: sorted top-k of float32 ``n = 10000`` scores, ``k = 16``,
``epsilon`` in {1e-2, 1e-3}, forward + backward on PyTorch: ``softk`` (semi-dual
Newton from the sorted potentials) against ``sinkhorn_200``, the SOFT authors'
code path (log-domain Sinkhorn, 200 fixed iterations, unrolled backward; see
``asv_bench/compare_sorting.py``, which also prints marginal errors and ratios).

Run ``python asv_bench/benchmarks/sorting.py`` to print the same cases once.
"""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np

import softk
from softk import soft_rank, soft_sort, soft_topk_sorted

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

try:
    import jax
    import jax.numpy as jnp
    from ott.tools import soft_sort as ott_sort
except ImportError:  # pragma: no cover
    ott_sort = None

EPSILON = 1e-2


def sinkhorn_200(x, k, eps):
    """The 200-iteration baseline of ``asv_bench/compare_sorting.py`` (imported lazily: asv
    imports this file from its own working directory)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "compare_sorting.py"
    spec = importlib.util.spec_from_file_location("compare_sorting", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sinkhorn_200(x, k, eps)


def _scores(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _torch_fwd_bwd(fn, x: np.ndarray, **kw):
    if torch is None:
        raise NotImplementedError("torch not installed")
    data = torch.asarray(x)
    v = torch.asarray(np.random.default_rng(1).normal(size=fn(data, **kw).shape).astype(np.float32))

    def run():
        leaf = data.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", softk.NotConvergedWarning)
            (fn(leaf, **kw) * v).sum().backward()
        return leaf.grad

    return run


class TimeSoftRankSort:
    params = (["rank", "sort"], ["softk_torch", "ott"])
    param_names = ["op", "impl"]
    number = 1
    repeat = (1, 3, 10.0)
    timeout = 600.0

    def setup(self, op, impl):
        x = _scores((32, 1000))
        if impl == "softk_torch":
            self.run = _torch_fwd_bwd({"rank": soft_rank, "sort": soft_sort}[op], x, epsilon=EPSILON)
            return
        if ott_sort is None:
            raise NotImplementedError("ott-jax not installed")
        fn = {"rank": ott_sort.ranks, "sort": ott_sort.sort}[op]
        v = jnp.asarray(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
        grad = jax.jit(jax.grad(lambda z: jnp.sum(fn(z, axis=-1, epsilon=EPSILON) * v)))
        data = jnp.asarray(x)
        grad(data).block_until_ready()  # compile outside the timing
        self.run = lambda: grad(data).block_until_ready()

    def time_forward_backward(self, op, impl):
        self.run()


class TimeSortedTopk:
    params = (["softk", "sinkhorn_200"], [1e-2, 1e-3])
    param_names = ["impl", "epsilon"]
    number = 1
    repeat = (1, 5, 5.0)
    timeout = 300.0

    def setup(self, impl, epsilon):
        if impl == "softk":
            self.run = _torch_fwd_bwd(soft_topk_sorted, _scores((10_000,)), k=16, epsilon=epsilon)
        else:
            self.run = _torch_fwd_bwd(lambda z, k, epsilon: sinkhorn_200(z, k, epsilon)[0], _scores((10_000,)), k=16,
                                      epsilon=epsilon)
        self.run()  # warm-up

    def time_forward_backward(self, impl, epsilon):
        self.run()


if __name__ == "__main__":
    for cls in (TimeSortedTopk, TimeSoftRankSort):
        for combo in itertools.product(*cls.params):
            bench = cls()
            try:
                bench.setup(*combo)
            except NotImplementedError as exc:
                print(cls.__name__, combo, "skipped:", exc)
                continue
            start = time.perf_counter()
            bench.time_forward_backward(*combo)
            print(f"{cls.__name__} {combo}: {time.perf_counter() - start:.3f} s", flush=True)
