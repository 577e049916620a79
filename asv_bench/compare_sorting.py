#!/usr/bin/env python
"""softk's sorting family against its speed targets and peers, in one run.

Prints a markdown report (``--output FILE`` also writes it):

1. Soft ranks / soft sort, float32, batch 32 x n = 1000, m = n, epsilon = 1e-2:
   softk on PyTorch (forward; forward + backward of ``sum(out * v)``) against
   OTT-JAX's jitted ``ott.tools.soft_sort.ranks`` / ``sort`` (defaults:
   Sinkhorn threshold 1e-3, implicit differentiation; compiled first). OTT's
   forward + backward takes many minutes here: it runs once, in a subprocess
   stopped after ``--ott-timeout`` seconds (then the ratio is a lower bound).
   Target: softk forward + backward >= 10x faster, finite gradients.
2. Sorted top-k, float32, n = 10,000, k = 16, epsilon in {1e-2, 1e-3}:
   ``softk.soft_topk_sorted`` (forward + backward) against the SOFT authors'
   code path written here in PyTorch: log-domain Sinkhorn between the n scores
   and the k + 1 anchors, 200 fixed iterations, backward by unrolling.
   Target: >= 50x faster, marginal error < 1e-6.

Marginal errors are L1 norms on the plan ``P`` (total mass 1):
``||P 1 - a||_1`` (rows) and ``||P^T 1 - b||_1`` (columns), worst row of the batch.
softk times are PyTorch with ``torch.set_num_threads(1)``, both process CPU
time and wall time (medians after one warm-up call); OTT runs with JAX's
default threads, its CPU time summed over threads. The machine may be shared:
trust CPU times and ratios more than wall times.

Usage::

    python asv_bench/compare_sorting.py [--output asv_bench/SORTING_RESULTS.md] [--ott-timeout 150]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

BATCH, N, EPSILON = 32, 1000, 1e-2
TOPK_N, TOPK_K, TOPK_EPSILONS, BASELINE_ITERS = 10_000, 16, (1e-2, 1e-3), 200


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median (CPU, wall) seconds of ``repeat`` calls after a warm-up call."""
    out = fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall), out


# --------------------------------------------------------------------------- softk (PyTorch)


def softk_sorting(repeat: int) -> dict:
    import torch
    from array_api_compat import array_namespace

    import softk
    from softk.sorting import _problem, hard_potentials, solver_params, transport_plan

    torch.set_num_threads(1)
    x = torch.asarray(np.random.default_rng(0).normal(size=(BATCH, N)).astype(np.float32))
    v = torch.asarray(np.random.default_rng(1).normal(size=(BATCH, N)).astype(np.float32))
    results = {}
    for name, fn in [("rank", softk.soft_rank), ("sort", softk.soft_sort)]:
        def fwd():
            with torch.no_grad():
                return fn(x, epsilon=EPSILON)

        def fwd_bwd():
            leaf = x.clone().requires_grad_(True)
            (fn(leaf, epsilon=EPSILON) * v).sum().backward()
            return leaf.grad

        f_cpu, f_wall, _ = _timed(fwd, repeat)
        b_cpu, b_wall, grad = _timed(fwd_bwd, repeat)
        results[name] = dict(fwd_cpu=f_cpu, fwd_wall=f_wall, bwd_cpu=b_cpu, bwd_wall=b_wall,
                             finite=bool(torch.isfinite(grad).all()))
    # the plan both operators use, and its marginal errors
    xp = array_namespace(x)
    s, _, _, y, log_a, log_b, b, weights = _problem(xp, x, N, N, (), 0.0)
    params = solver_params(xp, x, "auto", None, None, N)
    plan = transport_plan(xp, (s[..., :, None] - y) ** 2, log_a, log_b, EPSILON, method=params["method"],
                          tol=params["tol"], max_iter=params["max_iter"], what="bench",
                          init=hard_potentials(xp, s, y, weights))
    p64 = plan.double()
    results["rows"] = float((p64.sum(-1) - 1.0 / N).abs().sum(-1).max())
    results["cols"] = float((p64.sum(-2) - 1.0 / N).abs().sum(-1).max())
    results["tol"] = params["tol"]
    return results


# --------------------------------------------------------------------------- OTT-JAX (subprocess per measurement)

_OTT_CHILD = r"""
import json, sys, time, numpy as np, jax, jax.numpy as jnp
from ott.tools import soft_sort
op, mode = sys.argv[1], sys.argv[2]
fn = {"rank": soft_sort.ranks, "sort": soft_sort.sort}[op]
x = jnp.asarray(np.random.default_rng(0).normal(size=(%d, %d)).astype(np.float32))
v = jnp.asarray(np.random.default_rng(1).normal(size=(%d, %d)).astype(np.float32))
if mode == "fwd":
    f = jax.jit(lambda z: fn(z, axis=-1, epsilon=%r))
else:
    f = jax.jit(jax.grad(lambda z: jnp.sum(fn(z, axis=-1, epsilon=%r) * v)))
c, w = time.process_time(), time.perf_counter()
compiled = f.lower(x).compile()
compile_s = time.perf_counter() - w
times = []
for _ in range(int(sys.argv[3])):
    c, w = time.process_time(), time.perf_counter()
    out = compiled(x).block_until_ready()
    times.append((time.process_time() - c, time.perf_counter() - w))
    print(json.dumps(dict(partial=times)), flush=True)
extra = {}
if mode == "fwd":  # the marginal errors of OTT's Sinkhorn on the same problem (its default threshold)
    from ott.geometry import pointcloud
    from ott.solvers import linear
    def plan_errors(row):
        s = jax.nn.sigmoid((row - row.mean()) / (row.std() + 1e-10))
        y = jnp.linspace(0.0, 1.0, row.shape[0])
        geom = pointcloud.PointCloud(s[:, None], y[:, None], epsilon=%r)
        P = linear.solve(geom).matrix
        return jnp.abs(P.sum(1) - 1 / row.shape[0]).sum(), jnp.abs(P.sum(0) - 1 / row.shape[0]).sum()
    r, cl = jax.jit(jax.vmap(plan_errors))(x)
    extra = dict(rows=float(r.max()), cols=float(cl.max()))
print(json.dumps(dict(times=times, compile=compile_s, finite=bool(jnp.isfinite(out).all()), **extra)), flush=True)
""" % (BATCH, N, BATCH, N, EPSILON, EPSILON, EPSILON)  # noqa: UP031 (a code template full of braces)


def ott_run(op: str, mode: str, calls: int, timeout: float) -> dict:
    try:
        import ott  # noqa: F401
    except ImportError:  # pragma: no cover
        return dict(error="ott-jax not installed")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _OTT_CHILD, op, mode, str(calls)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return dict(timeout=time.perf_counter() - start)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    final = [line for line in lines if "times" in line]
    if not final:
        text = (err or out).strip().splitlines()
        raised = [line for line in text if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        return dict(error="failed: " + ((raised or text or ["no output"])[-1])[:200])
    res = final[-1]
    res["cpu"] = statistics.median(t[0] for t in res["times"])
    res["wall"] = statistics.median(t[1] for t in res["times"])
    return res


# --------------------------------------------------------------------------- sorted top-k


def sinkhorn_200(x, k: int, eps: float, iters: int = BASELINE_ITERS):
    """The SOFT authors' path in PyTorch: log-domain Sinkhorn, n scores -> k + 1 anchors,
    ``iters`` fixed iterations, autograd through the unrolled loop; returns (A = n P[:, :k], P)."""
    import torch

    n = x.shape[-1]
    anchors = torch.arange(k + 1, dtype=x.dtype)
    cost = (-x[:, None] - anchors) ** 2  # largest scores -> the first anchors
    cost = cost / cost.max()
    log_mu = torch.full((n,), -math.log(n), dtype=x.dtype)
    log_nu = torch.tensor([-math.log(n)] * k + [math.log((n - k) / n)], dtype=x.dtype)
    f, g = torch.zeros(n, dtype=x.dtype), torch.zeros(k + 1, dtype=x.dtype)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None, :] - cost) / eps + log_nu[None, :], dim=1)
        g = -eps * torch.logsumexp((f[:, None] - cost) / eps + log_mu[:, None], dim=0)
    plan = torch.exp((f[:, None] + g[None, :] - cost) / eps + log_mu[:, None] + log_nu[None, :])
    return n * plan[:, :k], plan


def sorted_topk(repeat: int) -> list[dict]:
    import torch

    from softk.sorting_topk import soft_topk_sorted

    torch.set_num_threads(1)
    n, k = TOPK_N, TOPK_K
    x = torch.asarray(np.random.default_rng(0).normal(size=(n,)).astype(np.float32))
    v = torch.asarray(np.random.default_rng(1).normal(size=(n, k)).astype(np.float32))
    b = torch.tensor([1.0 / n] * k + [(n - k) / n], dtype=torch.float64)
    rows = []
    for eps in TOPK_EPSILONS:
        row = dict(epsilon=eps)
        for name, fn in [("softk", lambda z: soft_topk_sorted(z, k, epsilon=eps)),
                         ("baseline", lambda z: sinkhorn_200(z, k, eps)[0])]:
            def fwd_bwd():
                leaf = x.clone().requires_grad_(True)
                (fn(leaf) * v).sum().backward()
                return leaf.grad

            cpu, wall, grad = _timed(fwd_bwd, repeat)
            with torch.no_grad():
                if name == "softk":  # the plan: A = n P[:, :k], last column = 1/n - row sums of P[:, :k]
                    a_mat = soft_topk_sorted(x, k, epsilon=eps).double() / n
                    plan = torch.cat([a_mat, (1.0 / n - a_mat.sum(-1, keepdim=True))], -1)
                else:
                    plan = sinkhorn_200(x, k, eps)[1].double()
            row[name] = dict(cpu=cpu, wall=wall, finite=bool(torch.isfinite(grad).all()),
                             rows=float((plan.sum(-1) - 1.0 / n).abs().sum()),
                             cols=float((plan.sum(-2) - b).abs().sum()))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ott-timeout", type=float, default=150.0, help="seconds for each OTT forward+backward run")
    parser.add_argument("--skip-ott-grad", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    lines = ["# softk sorting family vs targets and peers (asv_bench/compare_sorting.py)", ""]
    import jax
    import torch  # noqa: E401

    try:
        import ott
        ott_version = ott.__version__
    except ImportError:
        ott_version = "not installed"
    lines += [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()}-core CPU, {platform.system()} {platform.machine()}; load average at start "
        f"{os.getloadavg()[0]:.1f}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, jax {jax.__version__}, ott {ott_version}",
        "- softk: PyTorch, 1 thread, medians of process CPU time (wall time in brackets); OTT: jitted, JAX's default"
        " threads (CPU time summed over threads), compile excluded",
        "",
        f"## 1. Soft ranks and sort, float32, batch {BATCH} x n = {N}, m = n, epsilon = {EPSILON}",
        "",
    ]
    ours = softk_sorting(args.repeat)
    table = ["| op | softk fwd | softk fwd+bwd | OTT fwd | OTT fwd+bwd | fwd+bwd speed-up (CPU) | target >= 10x | grads finite (softk / OTT) |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for op in ("rank", "sort"):
        mine = ours[op]
        fwd = ott_run(op, "fwd", args.repeat, 600.0)
        grad = dict(skipped=True) if args.skip_ott_grad else ott_run(op, "grad", 1, args.ott_timeout)
        ott_fwd = f"{_fmt(fwd['cpu'])} ({_fmt(fwd['wall'])})" if "cpu" in fwd else fwd.get("error", "?")
        if "cpu" in grad:
            ott_grad, speed = f"{_fmt(grad['cpu'])} ({_fmt(grad['wall'])})", grad["cpu"] / mine["bwd_cpu"]
            speed_s, finite = f"{speed:.0f}x", grad["finite"]
        elif "timeout" in grad:
            ott_grad = f"> {_fmt(grad['timeout'])} wall (stopped)"
            speed = grad["timeout"] / mine["bwd_wall"]
            speed_s, finite = f">= {speed:.0f}x (wall, lower bound)", "n/a"
        else:
            ott_grad, speed, speed_s, finite = grad.get("error", "skipped"), float("nan"), "n/a", "n/a"
        met = "yes" if speed >= 10 and mine["finite"] else ("n/a" if not math.isfinite(speed) else "**no**")
        table.append(f"| {op} | {_fmt(mine['fwd_cpu'])} ({_fmt(mine['fwd_wall'])}) | {_fmt(mine['bwd_cpu'])} "
                     f"({_fmt(mine['bwd_wall'])}) | {ott_fwd} | {ott_grad} | {speed_s} | {met} | {mine['finite']} / {finite} |")
        if "rows" in fwd:
            notes.append(f"- OTT ({op}) Sinkhorn on the same problem (threshold 1e-3): row error {fwd['rows']:.1e}, "
                         f"column error {fwd['cols']:.1e}; compile {fwd['compile']:.1f} s")
    lines += table + [""]
    lines.append(f"- softk plan (shared by rank and sort): row error {ours['rows']:.1e} (tol {ours['tol']:.0e}), "
                 f"column error {ours['cols']:.1e}")
    lines += notes + [""]
    lines += [f"## 2. Sorted top-k, float32, n = {TOPK_N:,}, k = {TOPK_K}, forward + backward", "",
              f"Baseline: log-domain Sinkhorn, {BASELINE_ITERS} fixed iterations, unrolled backward (PyTorch).", "",
              "| epsilon | softk | baseline | speed-up (CPU) | target >= 50x | softk rows / cols error | baseline rows / cols error | grads finite |",
              "|---|---|---|---|---|---|---|---|"]
    for row in sorted_topk(max(args.repeat, 5)):
        s, bl = row["softk"], row["baseline"]
        speed = bl["cpu"] / s["cpu"]
        ok = speed >= 50 and max(s["rows"], s["cols"]) < 1e-6 and s["finite"]
        lines.append(f"| {row['epsilon']:g} | {_fmt(s['cpu'])} ({_fmt(s['wall'])}) | {_fmt(bl['cpu'])} ({_fmt(bl['wall'])}) | "
                     f"{speed:.0f}x | {'yes' if ok else '**no**'} | {s['rows']:.1e} / {s['cols']:.1e} | "
                     f"{bl['rows']:.1e} / {bl['cols']:.1e} | {s['finite']} / {bl['finite']} |")
    lines += ["", f"Total run time: {time.perf_counter() - t0:.0f} s."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(report)


if __name__ == "__main__":
    main()
