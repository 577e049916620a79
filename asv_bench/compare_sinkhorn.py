"""softk.ot.sinkhorn against POT's ot.sinkhorn, one subprocess per case; prints a markdown report.

Dense target (issue 3): float64, two clouds of ``n = m = 2000`` uniform points
in the unit square (seed 0), squared Euclidean cost divided by its maximum,
uniform weights, row-marginal tolerance ``1e-6``, ``epsilon`` in {1e-3, 1e-2}.

* softk forward: ``sinkhorn(C, epsilon=eps, tol=1e-6).cost``; forward +
  gradient: ``softk.vjp(sinkhorn_cost, C, ...)`` and its pullback on NumPy,
  ``.cost.backward()`` on PyTorch (``dW/dC = P``, no unrolling).
* POT: ``ot.sinkhorn(a, b, C, eps, method="sinkhorn" | "sinkhorn_log",
  stopThr=1e-6, numItermax=100000)`` on NumPy and PyTorch (forward only: POT
  differentiates by unrolling its iterations, tens of GB here).

Every case runs in a fresh ``python`` process (so that ``VmHWM``, the peak
resident set, is the case's own): the inputs are built, the resident set is
read, then the call is timed ``--repeats`` times (POT's ``sinkhorn_log`` at
``eps = 1e-3`` once: ~60 s on NumPy). Reported: median wall and process-CPU
seconds, iterations, the L1 row- and column-marginal errors of the returned
plan (computed after timing), ``VmHWM`` and its growth over the resident set
before the first call ("net").

``--online N`` adds the online run: ``n = m = N`` uniform points in the unit
cube ``[0, 1]^3`` (seed 0), **unnormalised** squared Euclidean cost (so
``C <= 3``), ``epsilon = 1e-2`` in those units, ``sinkhorn(x=x, y=y,
online=True)``; tolerance 1e-6 in float64, 1e-4 in float32. With
``N = 50000`` a dense float64 cost would be 20 GB; each iteration is 2.5e9
plan entries, so this takes minutes per library.

    python asv_bench/compare_sinkhorn.py                          # dense table (~3 min; POT log 1e-3 dominates)
    python asv_bench/compare_sinkhorn.py --skip-slow              # without POT sinkhorn_log at 1e-3
    python asv_bench/compare_sinkhorn.py --online 50000 --only-online --online-libs torch-float32
    python asv_bench/compare_sinkhorn.py --output asv_bench/SINKHORN_RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CASE = r'''
import json, os, sys, time, warnings
spec = json.loads(sys.argv[1])
threads = spec["threads"]
import numpy as np
torch = None
if spec["lib"] == "torch":  # imported only when used: PyTorch alone adds ~200 MB to the resident set
    import torch
    torch.set_num_threads(threads)

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")

rng = np.random.default_rng(0)
lib, dtype = spec["lib"], spec["dtype"]
out = {}
if spec["kind"] == "online":
    n = spec["n"]
    x, y = rng.random((n, 3)), rng.random((n, 3))
    if lib == "torch":
        x, y = torch.asarray(x, dtype=getattr(torch, dtype)), torch.asarray(y, dtype=getattr(torch, dtype))
    else:
        x, y = x.astype(dtype), y.astype(dtype)
    from softk.ot import sinkhorn
    tol = 1e-6 if dtype == "float64" else 1e-4
    before = status("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    res = sinkhorn(x=x, y=y, epsilon=spec["eps"], tol=tol, online=True, max_iter=spec.get("max_iter", 10000))
    err = float(res.error)
    out.update(wall=[time.perf_counter() - t0], cpu=[time.process_time() - c0], n_iter=int(res.n_iter), row_err=err, col_err=float("nan"), tol=tol)
else:
    n, eps = spec["n"], spec["eps"]
    x, y = rng.random((n, 2)), rng.random((n, 2))
    c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    c /= c.max()
    w = np.full(n, 1.0 / n)
    if lib == "torch":
        c, w = torch.asarray(c), torch.asarray(w)
    impl = spec["impl"]
    if impl.startswith("softk"):
        import softk
        from softk.ot import sinkhorn, sinkhorn_cost

        def plan_of(res):
            return res.plan
        if impl == "softk-fwd":
            def call():
                res = sinkhorn(c, epsilon=eps, tol=1e-6)
                float(res.cost)
                return res
        elif lib == "torch":
            def call():
                leaf = c.clone().requires_grad_(True)
                res = sinkhorn(leaf, epsilon=eps, tol=1e-6)
                res.cost.backward()
                return res
        else:
            def call():
                value, pullback = softk.vjp(sinkhorn_cost, c, epsilon=eps, tol=1e-6)
                return pullback(np.ones(()))[0]
    else:
        import ot
        method = impl.split("-", 1)[1]

        def call():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ot.sinkhorn(w, w, c, eps, method=method, stopThr=1e-6, numItermax=100_000)
    before = status("VmRSS")
    walls, cpus = [], []
    for _ in range(spec["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        res = call()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = status("VmHWM")
    if impl.startswith("softk"):
        r = sinkhorn(c, epsilon=eps, tol=1e-6)
        plan, n_iter = r.plan, int(r.n_iter)
    else:
        plan, n_iter = res, -1
    plan = plan.detach().numpy() if hasattr(plan, "detach") else np.asarray(plan)
    out.update(wall=walls, cpu=cpus, n_iter=n_iter, row_err=float(np.abs(plan.sum(1) - 1.0 / n).sum()), col_err=float(np.abs(plan.sum(0) - 1.0 / n).sum()))
out.update(peak_mb=status("VmHWM") if spec["kind"] == "online" else peak, before_mb=before)
print("RESULT " + json.dumps(out))
'''


def run_case(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    threads = str(spec["threads"])
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    try:
        proc = subprocess.run([sys.executable, "-c", CASE, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def median(values: list) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores"
    except OSError:
        return ""


def dense_section(args) -> list[str]:
    lines = [
        f"## Dense: n = m = {args.n}, 2-D uniform, cost / max, float64, tol 1e-6, {args.threads} thread(s)",
        "",
        "| eps | library | implementation | wall s (median) | CPU s | iterations | row err | col err | peak MB | net MB | wall / softk fwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for eps in args.eps:
        for lib in args.libs:
            ref = None
            for impl in args.impls:
                slow = impl == "pot-sinkhorn_log" and eps < 5e-3
                if slow and args.skip_slow:
                    continue
                spec = dict(kind="dense", lib=lib, dtype="float64", impl=impl, n=args.n, eps=eps, threads=args.threads, repeats=1 if slow or impl.startswith("pot") else args.repeats)
                start = time.perf_counter()
                r = run_case(spec, args.timeout)
                if "error" in r:
                    lines.append(f"| {eps:g} | {lib} | {impl} | {r['error']} | | | | | | | |")
                    print(lines[-1], flush=True)
                    continue
                wall, cpu = median(r["wall"]), median(r["cpu"])
                ref = wall if impl == "softk-fwd" else ref
                ratio = f"{wall / ref:.2f}" if ref else ""
                iters = r["n_iter"] if r["n_iter"] >= 0 else "n/a"
                lines.append(
                    f"| {eps:g} | {lib} | {impl} | {wall:.3f} | {cpu:.3f} | {iters} | {r['row_err']:.1e} | {r['col_err']:.1e} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['before_mb']:.0f} | {ratio} |"
                )
                print(lines[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
    return lines


def online_section(args) -> list[str]:
    lines = [
        f"## Online: n = m = {args.online}, 3-D uniform in the unit cube, cost = squared distance (<= 3), eps = {args.online_eps:g}",
        "",
        "| library | dtype | threads | tol | wall s | CPU s | iterations | row err | peak MB (VmHWM) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in args.online_libs:
        lib, dtype = item.split("-")
        spec = dict(kind="online", lib=lib, dtype=dtype, n=args.online, eps=args.online_eps, threads=args.threads, repeats=1, max_iter=args.online_max_iter)
        r = run_case(spec, args.online_timeout)
        if "error" in r:
            lines.append(f"| {lib} | {dtype} | {args.threads} | | {r['error']} | | | | |")
        else:
            lines.append(
                f"| {lib} | {dtype} | {args.threads} | {r['tol']:g} | {r['wall'][0]:.1f} | {r['cpu'][0]:.1f} | {r['n_iter']} | {r['row_err']:.1e} | {r['peak_mb']:.0f} |"
            )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--eps", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 1e-2])
    p.add_argument("--libs", type=lambda s: s.split(","), default=["numpy", "torch"])
    p.add_argument("--impls", type=lambda s: s.split(","), default=["softk-fwd", "softk-fwd+grad", "pot-sinkhorn", "pot-sinkhorn_log"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--skip-slow", action="store_true", help="skip POT sinkhorn_log at eps < 5e-3 (~60 s on NumPy)")
    p.add_argument("--online", type=int, default=0, help="also run the online solver on N x N points in 3-D (e.g. 50000)")
    p.add_argument("--only-online", action="store_true")
    p.add_argument("--online-eps", type=float, default=1e-2)
    p.add_argument("--online-libs", type=lambda s: s.split(","), default=["torch-float32", "torch-float64", "numpy-float64"])
    p.add_argument("--online-max-iter", type=int, default=10_000)
    p.add_argument("--online-timeout", type=float, default=7200.0)
    p.add_argument("--output", help="also write the report to this file")
    args = p.parse_args()
    lines = [f"# softk sinkhorn vs POT ({time.strftime('%Y-%m-%d %H:%M')}, {load()})", ""]
    if not args.only_online:
        lines += dense_section(args) + [""]
    if args.online:
        lines += online_section(args) + [""]
    lines.append(f"Finished with {load()}.")
    report = "\n".join(lines)
    print()
    print(report)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(report + "\n")


if __name__ == "__main__":
    main()
