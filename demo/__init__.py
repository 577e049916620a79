"""``softk demo``: soft top-k on every installed backend, checked against NumPy float64.

For each backend it prints the largest deviation from the NumPy float64
result (float64 and float32 inputs), a directional finite-difference check of
the gradient taken with that framework's own autograd, and the median time of
a forward + backward pass; then it writes a PNG of the indicator for several
epsilons beside the hard top-k mask.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

import softk

from .runners import Runner, installed_runners

__all__ = ["main", "run"]


def _gradient_check(runner: Runner, x: np.ndarray, kw: dict, rng: np.random.Generator) -> float:
    """Relative error of ``v^T J d`` from autograd against a central difference, float64."""
    v, d = rng.normal(size=x.shape), rng.normal(size=x.shape)
    _, grad = runner.value_and_grad(runner.asarray(x), runner.asarray(v), kw)
    h = 1e-6
    plus = runner.to_numpy(softk.soft_topk(runner.asarray(x + h * d), **kw))
    minus = runner.to_numpy(softk.soft_topk(runner.asarray(x - h * d), **kw))
    fd = float(((plus - minus) * v).sum() / (2 * h))
    return abs(float((runner.to_numpy(grad) * d).sum()) - fd) / max(1.0, abs(fd))


def _median_time(runner: Runner, x: Any, v: Any, kw: dict, repeats: int) -> float:
    runner.sync(runner.value_and_grad(x, v, kw)[1])  # warm-up (and JAX compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.sync(runner.value_and_grad(x, v, kw)[1])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(batch: int = 8, n: int = 1000, k: int = 10, epsilon: float = 0.05, repeats: int = 5, plot: str | None = "softk-demo.png") -> list[dict]:
    """Run the demo; return one result row per backend (and print the table)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, n))
    kw = dict(k=k, epsilon=epsilon)
    reference = softk.soft_topk(x, **kw)
    runners, skipped = installed_runners()
    rows = []
    for runner in runners:
        dev64 = np.abs(runner.to_numpy(softk.soft_topk(runner.asarray(x), **kw)) - reference).max()
        dev32 = np.abs(runner.to_numpy(softk.soft_topk(runner.asarray(x.astype(np.float32)), **kw)) - reference).max()
        grad_err = _gradient_check(runner, x[:2, :50], dict(k=5, epsilon=0.1), rng)
        x32, v32 = runner.asarray(x.astype(np.float32)), runner.asarray(rng.normal(size=x.shape).astype(np.float32))
        seconds = _median_time(runner, x32, v32, kw, repeats)
        rows.append(dict(backend=runner.name, dev64=dev64, dev32=dev32, grad_err=grad_err, ok=grad_err < 1e-6, ms=1e3 * seconds))
    print(f"softk {softk.__version__}: soft_topk, batch {batch} x n {n}, k = {k}, epsilon = {epsilon}")
    print(f"{'backend':<18}{'max dev f64':>13}{'max dev f32':>13}{'grad check':>20}{'fwd+bwd f32':>14}")
    for r in rows:
        check = f"{'pass' if r['ok'] else 'FAIL'} ({r['grad_err']:.1e})"
        print(f"{r['backend']:<18}{r['dev64']:>13.1e}{r['dev32']:>13.1e}{check:>20}{r['ms']:>11.2f} ms")
    for note in skipped:
        print(f"skipped {note}")
    if plot:
        from .plot import plot_indicators

        plot_indicators(plot)
        print(f"wrote {plot}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="softk demo", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plot", default="softk-demo.png", help="PNG path ('' to skip)")
    args = parser.parse_args(argv)
    rows = run(args.batch, args.n, args.k, args.epsilon, args.repeats, args.plot or None)
    return 0 if all(r["ok"] and r["dev64"] < 1e-9 and r["dev32"] < 1e-4 for r in rows) else 1
