"""``softk demo``: every operator on every installed backend, checked against NumPy float64.

For each operator and backend it prints the largest deviation from the NumPy
float64 result, a directional finite-difference check of the gradient taken
with that framework's own autograd (``softk.vjp`` for NumPy, CuPy and
array-api-strict), and the median time of a forward + backward pass on the
small demo inputs; then it writes its figures (soft top-k, soft sort and
ranks, OT plans, beam search against epsilon) to a folder.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import statistics
import time
import warnings
from typing import Any

import numpy as np

import softk

from .cases import CASES, Case
from .runners import Runner, installed_runners

__all__ = ["main", "run"]

H = 1e-6  # finite-difference step (float64)
DEV_OK, GRAD_OK = 1e-9, 1e-5


def _numpy_value(case: Case, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    return np.asarray(case.call(*arrays))


def _directional_fd(case: Case, arrays: tuple, d: tuple, v: np.ndarray) -> float:
    """``<v, f(x + h d) - f(x - h d)> / 2h`` with NumPy."""
    plus = _numpy_value(case, tuple(a + H * e for a, e in zip(arrays, d)))
    minus = _numpy_value(case, tuple(a - H * e for a, e in zip(arrays, d)))
    return float(((plus - minus) * v).sum() / (2 * H))


def _timed(fn: Any, sync: Any, repeats: int) -> float:
    sync(fn())  # warm-up (and JAX compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _check(case: Case, runner: Runner, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    arrays = case.inputs(rng)
    reference = _numpy_value(case, arrays)
    v = rng.normal(size=reference.shape)
    d = tuple(rng.normal(size=a.shape) for a in arrays)
    backend_arrays = tuple(runner.asarray(a) for a in arrays)
    result = runner.value_and_grad(case, backend_arrays, runner.asarray(v))  # (under JAX: one compilation)
    out = case.call(*backend_arrays) if result is None else result[0]
    dev = float(np.abs(runner.to_numpy(out) - reference).max())
    row = dict(operator=case.name, backend=runner.name, dev=dev, grad_err=None)
    if result is None:  # no gradient on this backend: time the forward pass
        row["ms"] = 1e3 * _timed(lambda: case.call(*backend_arrays), runner.sync, repeats)
        row["timed"] = "fwd"
    else:
        grads = [runner.to_numpy(g) for g in result[1]]
        fd = _directional_fd(case, arrays, d, v)
        ad = float(sum((g * e).sum() for g, e in zip(grads, d)))
        row["grad_err"] = abs(ad - fd) / max(1.0, abs(fd))
        row["ms"] = 1e3 * _timed(lambda: runner.value_and_grad(case, backend_arrays, runner.asarray(v))[1],
                                 runner.sync, repeats)
        row["timed"] = "fwd+bwd"
    row["ok"] = dev < DEV_OK and (row["grad_err"] is None or row["grad_err"] < GRAD_OK)
    return row


def _print_table(rows: list[dict], skipped: list[str]) -> None:
    print(f"softk {softk.__version__}: every operator on every installed backend (float64, NumPy as reference)")
    print(f"{'operator':<21}{'backend':<18}{'max dev':>9}  {'gradient check':<20}{'time':>10}")
    for r in rows:
        if r["grad_err"] is None:
            grad = "n/a (composite)"
        else:
            grad = f"{'pass' if r['grad_err'] < GRAD_OK else 'FAIL'} ({r['grad_err']:.0e})"
        dev = f"{r['dev']:.0e}" + ("" if r["dev"] < DEV_OK else " FAIL")
        print(f"{r['operator']:<21}{r['backend']:<18}{dev:>9}  {grad:<20}{r['ms']:>7.2f} ms {r['timed']}")
    for note in skipped:
        print(f"skipped {note}")
    print("n/a (composite): NumPy-like backends have no autograd, and softk.vjp takes single operators only;")
    print("sinkhorn_divergence and beam_search are differentiated by PyTorch and JAX.")


def run(out: str | None = "softk-demo", repeats: int = 3, only: str | None = None) -> list[dict]:
    """Run the demo; return one result row per operator and backend (and print the table)."""
    runners, skipped = installed_runners()
    cases = [c for c in CASES if only is None or re.search(only, c.name)]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", softk.NotConvergedWarning)
        for case in cases:
            for runner in runners:
                rows.append(_check(case, runner, repeats))
    _print_table(rows, skipped)
    if out:
        from .plot import write_figures

        folder = pathlib.Path(out)
        paths = write_figures(folder)
        print(f"wrote {len(paths)} figures to {folder}/: {', '.join(p.name for p in paths)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="softk demo", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="softk-demo", help="folder for the figures ('' to skip them)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (median)")
    parser.add_argument("--only", default=None, help="regular expression: the operators to run")
    args = parser.parse_args(argv)
    rows = run(args.out or None, args.repeats, args.only)
    return 0 if rows and all(r["ok"] for r in rows) else 1
