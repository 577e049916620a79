"""Sinkhorn divergence, value + gradient w.r.t. ``x``: softk (NumPy, PyTorch, JAX jit) vs OTT-JAX vs GeomLoss.

One process, the same problems: two Gaussian clouds in 2-D (``x`` at the
origin with spread 0.1, ``y`` shifted by 0.5), uniform weights, float64,
``epsilon = 0.01`` on the squared Euclidean cost (``p = 2``, ``blur = eps**0.5``
in GeomLoss, whose cost is half the squared distance, so its values are
halved). Accuracy: the gradient's relative L2 error against a reference
(softk NumPy at ``tol = 1e-10``). softk and OTT run at their marginal
tolerances (``tol = 1e-6``; OTT ``threshold = 1e-6``); GeomLoss at
``scaling`` 0.5, 0.9 and 0.99 (it has no tolerance). Median wall time of
``--repeats`` calls after a warm-up (compilation excluded for jitted code).

``python asv_bench/compare_divergence.py [--sizes 200 1000 5000] [--repeats 3] [--threads 2] [--output asv_bench/DIVERGENCE_RESULTS.md]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np

import softk

EPS = 0.01


def clouds(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2)) * 0.1, rng.normal(size=(n, 2)) * 0.1 + 0.5


def median_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def softk_numpy(x, y, tol=1e-6):
    """NumPy has no autograd: the divergence is one softk operator, differentiated by ``softk.vjp``."""

    def run():
        value, pullback = softk.vjp(softk.sinkhorn_divergence, x, y, epsilon=EPS, tol=tol)
        return float(value), pullback(np.ones(()))[0]

    return run


def softk_torch(x, y):
    import torch

    xt, yt = torch.tensor(x), torch.tensor(y)

    def run():
        xr = xt.clone().requires_grad_(True)
        d = softk.sinkhorn_divergence(xr, yt, epsilon=EPS)
        (g,) = torch.autograd.grad(d, xr)
        return float(d), g.numpy()

    return run


def softk_jax(x, y):
    import jax

    f = jax.jit(jax.value_and_grad(lambda a, b: softk.sinkhorn_divergence(a, b, epsilon=EPS)))
    xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)

    def run():
        v, g = f(xj, yj)
        return float(v), np.asarray(g)

    return run


def ott(x, y):
    import jax
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence as sd

    def div(a, b):
        out = sd.sinkhorn_divergence(
            pointcloud.PointCloud, a, b, epsilon=EPS, static_b=True,
            solve_kwargs={"threshold": 1e-6, "max_iterations": 10_000},
        )
        return out[1].divergence if isinstance(out, tuple) else out.divergence

    f = jax.jit(jax.value_and_grad(div))
    xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)

    def run():
        v, g = f(xj, yj)
        return float(v), np.asarray(g)

    return run


def geomloss(x, y, scaling):
    import torch
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=EPS**0.5, scaling=scaling, debias=True, backend="tensorized")
    xt, yt = torch.tensor(x), torch.tensor(y)

    def run():
        xr = xt.clone().requires_grad_(True)
        d = loss(xr, yt)
        (g,) = torch.autograd.grad(d, xr)
        return 2.0 * float(d), 2.0 * g.numpy()  # GeomLoss's cost is |x - y|^2 / 2

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    import jax
    import torch

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(args.threads)
    lines = [
        "# Sinkhorn divergence: value + gradient, same run",
        "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch threads; float64, d = 2, eps = {EPS}. Time: median of {args.repeats} (s). "
        "Error: relative L2 error of the gradient against softk NumPy at tol 1e-10.",
        "",
        "| n | implementation | time (s) | gradient error | value |",
        "|---|---|---|---|---|",
    ]
    for n in args.sizes:
        x, y = clouds(n)
        ref_value, ref_grad = softk_numpy(x, y, tol=1e-10)()
        rows = [("softk NumPy", softk_numpy(x, y)), ("softk PyTorch", softk_torch(x, y)), ("softk JAX (jit)", softk_jax(x, y))]
        try:
            rows.append(("OTT-JAX (jit)", ott(x, y)))
        except ImportError:
            pass
        try:
            scalings = (0.5, 0.9, 0.99) if n <= 1000 else (0.5, 0.9)  # 0.99 takes minutes at 5,000
            rows += [(f"GeomLoss scaling {s}", geomloss(x, y, s)) for s in scalings]
        except ImportError:
            pass
        for name, fn in rows:
            try:
                seconds, (value, grad) = median_time(fn, args.repeats)
            except Exception as err:  # a peer failing is a result too
                lines.append(f"| {n} | {name} | failed: {type(err).__name__} | | |")
                continue
            rel = np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad)
            lines.append(f"| {n} | {name} | {seconds:.3f} | {rel:.1e} | {value:.6f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
