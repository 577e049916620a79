"""``softk.ot.sinkhorn(method="newton")`` against Sinkhorn (softk's and POT's) on small, hard problems.

Float64, two clouds of Gaussian points in 2-D (seed 0), the *unnormalised*
squared Euclidean cost (range ~10-30), uniform weights, marginal tolerance
``1e-9``: softk's Sinkhorn stops on the row L1 error (columns exact), Newton on
the relative column error (rows exact), POT's on its column error. Every
solver gets ``max_iter = 20,000``. Reported per case: median wall time of
``--repeats`` calls (process CPU time in parentheses), iterations (Newton
steps), and the L1 row and column errors of the returned plan. softk's
forward + gradient is ``.cost`` and ``dW/dC = P`` (``softk.vjp`` on NumPy,
``.backward()`` on PyTorch).

``python asv_bench/compare_newton.py [--repeats 5] [--threads 1] [--output asv_bench/NEWTON_RESULTS.md]``
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
import warnings

import numpy as np

import softk
from softk import ot as sot

CASES = [(5, 5, 0.05), (200, 16, 1e-2), (1000, 32, 1e-3), (300, 300, 1e-2), (300, 300, 1e-3)]
TOL, MAX_ITER = 1e-9, 20_000


def clouds(n: int, m: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.5
    return ((x[:, None] - y[None]) ** 2).sum(-1)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``repeats`` calls after a first one; a first call
    slower than 1 s is the only one timed."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    walls, cpus = [time.perf_counter() - w], [time.process_time() - c]
    if walls[0] > 1.0:
        return walls[0], cpus[0], out
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def errors(plan: np.ndarray) -> str:
    n, m = plan.shape
    if not np.isfinite(plan).all() or plan.sum() < 0.5:
        return "failed: non-finite or all-zero plan (kernel underflow) |"
    return f"{np.abs(plan.sum(1) - 1 / n).sum():.1e} | {np.abs(plan.sum(0) - 1 / m).sum():.1e}"


def rows(cost: np.ndarray, eps: float, repeats: int) -> list[tuple[str, float, float, str, str]]:
    import torch

    out = []
    for method in ("sinkhorn", "newton"):
        kw = dict(epsilon=eps, tol=TOL, max_iter=MAX_ITER, method=method)
        wall, cpu, res = timed(lambda: sot.sinkhorn(cost, **kw), repeats)
        out.append((f"softk {method} (NumPy)", wall, cpu, str(int(res.n_iter)), errors(res.plan)))
        fwd_grad = lambda: softk.vjp(sot.sinkhorn_cost, cost, **kw)[1](np.ones(()))  # noqa: E731
        wall, cpu, _ = timed(fwd_grad, repeats)
        out.append((f"softk {method} (NumPy) fwd+grad", wall, cpu, "", ""))
        t_cost = torch.tensor(cost)

        def torch_fwd_grad():
            c = t_cost.clone().requires_grad_(True)
            sot.sinkhorn(c, **kw).cost.backward()
            return c.grad

        wall, cpu, _ = timed(torch_fwd_grad, repeats)
        out.append((f"softk {method} (PyTorch) fwd+grad", wall, cpu, "", ""))
    try:
        import ot
    except ImportError:
        return out
    a, b = np.full(cost.shape[0], 1 / cost.shape[0]), np.full(cost.shape[1], 1 / cost.shape[1])
    for method in ("sinkhorn", "sinkhorn_log"):
        def pot():
            return ot.sinkhorn(a, b, cost, eps, method=method, stopThr=TOL, numItermax=MAX_ITER, log=True)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wall, cpu, (plan, log) = timed(pot, repeats)
        out.append((f"POT {method} (NumPy)", wall, cpu, str(log.get("niter", "?")), errors(plan)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    lines = [
        f"# softk Newton vs Sinkhorn on small, hard problems ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python asv_bench/compare_newton.py --repeats {args.repeats} --threads {args.threads}`; float64, tol {TOL:g}, "
        "Gaussian clouds, unnormalised squared cost. Wall: median (process CPU; NumPy's BLAS may use 2 threads).",
        "",
    ]
    for n, m, eps in CASES:
        cost = clouds(n, m)
        lines += [f"## n = {n}, m = {m}, epsilon = {eps:g} (cost range {cost.max() - cost.min():.1f})", "",
                  "| solver | wall ms (CPU ms) | iterations | row err (L1) | col err (L1) |", "|---|---|---|---|---|"]
        for name, wall, cpu, iters, errs in rows(cost, eps, args.repeats):
            lines.append(f"| {name} | {wall * 1e3:.1f} ({cpu * 1e3:.1f}) | {iters} | {errs or ' | '} |")
        lines.append("")
        print(f"n={n} m={m} eps={eps:g} done", flush=True)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
