"""ENOT against the amortised-conjugate (W2OT) baseline on Gaussian pairs (L2-UVP, CPU time), and a mixture's W2.

Every case (dimension x method) runs in its own ``python`` process with one
thread (``OMP_NUM_THREADS=1``, XLA's single-threaded Eigen), ``--jobs`` at a
time (default one); the problem, the methods (``enot``, ``enot_uni``,
``enot_paper``, ``w2ot``, ``baseline_5gd``, ``ott_enot``) and their settings
are in ``asv_bench/benchmarks/enot.py`` (``run_case``). Reported per case: the
final L2-UVP, the training process-CPU and wall seconds (evaluations
excluded), the L-BFGS work of the conjugate solve, and, for each ENOT variant
against each baseline, the CPU seconds each needs to first reach the same
L2-UVP: the worse of the two final values (so both reach it), on the common
grid of checkpoints every ``--eval-every`` steps.

Unless ``--no-mixture``, a 2-D Gaussian-mixture pair (4 components to 8) whose
OT map is unknown is added: ENOT's primal ``2 E c(x, T(x))`` and dual
``2 (E g(y) + E g^c(x))`` estimates of ``W2^2`` beside ``softk.sinkhorn`` on
2,000 samples a side (transport cost of the entropic plan at
``epsilon = 1e-3`` times the mean cost, and the debiased divergence).

    python asv_bench/compare_enot.py --methods enot,w2ot,ott_enot --no-mixture 2> quadratic.jsonl
    python asv_bench/compare_enot.py --extra quadratic=False --no-mixture 2> plain.jsonl   # the paper's plain MLPs
    python asv_bench/compare_enot.py --dims 2,16 --steps 500 --no-mixture                  # a quick look
    python asv_bench/compare_enot.py --from-json quadratic.jsonl plain.jsonl --output asv_bench/ENOT_RESULTS.md
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}

CASE = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from enot import run_case
spec = json.loads(sys.argv[1])
print(json.dumps(run_case(spec.pop("dim"), spec.pop("method"), spec.pop("steps"), **spec)))
"""

MIXTURE = r"""
import json, time, numpy as np, softk
from softk.enot import ENOT
def mixture(centres, spread):
    centres = np.asarray(centres, float)
    return lambda g, n: centres[g.integers(0, len(centres), n)] + spread * g.normal(size=(n, 2))
sx = mixture([[-1, -1], [-1, 1], [1, -1], [1, 1]], 0.3)
angles = np.arange(8) * np.pi / 4
sy = mixture(np.stack([2 * np.cos(angles) + 0.5, 2 * np.sin(angles)], 1), 0.2)
steps = int(__import__("sys").argv[1])
trainer = ENOT(2, framework="jax", seed=0, hidden=(128,) * 4, lr=1e-3, lr_schedule="cosine", batch_size=512)
w, c = time.perf_counter(), time.process_time()
trainer.fit(sx, sy, steps, progress=False)
wall, cpu = time.perf_counter() - w, time.process_time() - c
x, y = sx(np.random.default_rng(1), 20000), sy(np.random.default_rng(2), 20000)
primal, dual = trainer.cost_estimate(x, y)
xs, ys = x[:2000], y[:2000]
mean_cost = float(((xs[:, None] - ys[None]) ** 2).sum(-1).mean())
eps = 1e-3 * mean_cost
w2 = time.perf_counter()
out = softk.sinkhorn(x=xs, y=ys, epsilon=eps, tol=1e-4, max_iter=100000)
plan_cost = float((out.plan * ((xs[:, None] - ys[None]) ** 2).sum(-1)).sum())
div = float(softk.sinkhorn_divergence(xs, ys, epsilon=eps, tol=1e-4, max_iter=100000))
print(json.dumps(dict(steps=steps, wall=wall, cpu=cpu, w2_primal=2 * primal, w2_dual=2 * dual,
                      sinkhorn_plan_cost=plan_cost, sinkhorn_divergence=div, epsilon=eps,
                      sinkhorn_seconds=time.perf_counter() - w2)))
"""


def run(code: str, *args: str) -> dict:
    env = {**os.environ, **ONE_THREAD}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_to(curve: list, level: float) -> tuple[float, float] | None:
    """(step, cpu seconds) at the first checkpoint with L2-UVP <= level."""
    for step, _, cpu, uvp in curve:
        if uvp <= level:
            return step, cpu
    return None


ENOTS, BASELINES = ("enot", "enot_uni", "enot_paper", "ott_enot"), ("w2ot", "baseline_5gd")


def _case_rows(results: list[dict]) -> list[str]:
    lines = ["| D | method | L2-UVP % (final) | best | CPU s | CPU ms/step | wall s | L-BFGS iters / evals | "
             "W2^2 true | primal | dual |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['dim']} | {r['method']} | failed: {r['error']} | | | | | | | | |")
            continue
        steps, wall, cpu, uvp = r["curve"][-1]
        best = min(c[-1] for c in r["curve"])
        conj = r.get("conjugate") or []
        solve = (f"{sum(c[0] for c in conj) / len(conj):.1f} / {sum(c[1] for c in conj) / len(conj):.0f}"
                 if conj else "")
        lines.append(f"| {r['dim']} | {r['method']} | {uvp:.3g} | {best:.3g} | {cpu:.0f} | {1000 * cpu / steps:.0f} | "
                     f"{wall:.0f} | {solve} | {r['w2']:.4g} | {r['w2_primal']:.4g} | {r['w2_dual']:.4g} |")
    return lines


def _speed_rows(results: list[dict]) -> list[str]:
    lines = ["| D | ENOT | baseline | level % | ENOT CPU s (step) | baseline CPU s (step) | speed-up (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    by_dim: dict[int, dict] = {}
    for r in results:
        if "error" not in r:
            by_dim.setdefault(r["dim"], {})[r["method"]] = r
    for dim, runs in sorted(by_dim.items()):
        for name in (m for m in ENOTS if m in runs):
            for base_name in (m for m in BASELINES if m in runs):
                enot, base = runs[name], runs[base_name]
                common = max(enot["curve"][-1][-1], base["curve"][-1][-1])
                for level in sorted({common, 1.0}, reverse=True):
                    te, tb = time_to(enot["curve"], level), time_to(base["curve"], level)
                    if te is None or tb is None:
                        continue
                    lines.append(f"| {dim} | {name} | {base_name} | {level:.3g} | {te[1]:.1f} ({te[0]}) | "
                                 f"{tb[1]:.1f} ({tb[0]}) | {tb[1] / te[1]:.2f}x |")
    return lines


def report(results: list[dict], mixture: dict | None, args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# ENOT on Gaussian pairs: L2-UVP and time against the amortised-conjugate baseline",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(load average at the end {os.getloadavg()[0]:.1f}); one thread per case, {args.jobs} case(s) at a time. "
        f"JAX trainer (jitted step, optax Adam), float32. {args.steps} steps per case, L2-UVP on 4,096 fresh "
        f"points every {args.eval_every} steps; seconds are training only. "
        + (f"Whole run: {seconds / 60:.1f} min." if seconds == seconds else "Rebuilt from the runs' JSON."),
    ]
    sections = [(True, "Networks with a quadratic term (`quadratic=True`, the default)"),
                (False, "The paper's plain MLPs (`quadratic=False`)")]
    for quadratic, title in sections:
        order = (*ENOTS, *BASELINES)
        rows = sorted((r for r in results if r.get("quadratic", True) == quadratic or r["method"] == "ott_enot"
                       and quadratic), key=lambda r: (r["dim"], order.index(r["method"]) if r["method"] in order else 9))
        if not rows:
            continue
        lines += ["", f"## {title}", "", *_case_rows(rows), "",
                  "Time to the same L2-UVP: CPU seconds (and step) at the first checkpoint where each method "
                  "reaches the worse of the two final L2-UVPs (also 1 % where both reach it):", "",
                  *_speed_rows(rows), "", "L2-UVP curves (steps: %):", ""]
        for r in rows:
            if "error" not in r:
                pts = ", ".join(f"{s}: {u:.3g}" for s, _, _, u in r["curve"])
                lines.append(f"- D = {r['dim']}, {r['method']}: {pts}")
    if mixture is not None:
        lines += ["", "## Gaussian mixture pair (2-D, 4 components to 8): W2^2", ""]
        if "error" in mixture:
            lines.append(f"failed: {mixture['error']}")
        else:
            m = mixture
            lines += [f"ENOT ({m['steps']} steps, {m['wall']:.0f} s wall, {m['cpu']:.0f} s CPU; estimates on 20,000 "
                      f"points): primal {m['w2_primal']:.4f}, dual {m['w2_dual']:.4f}. softk.sinkhorn on 2,000 "
                      f"points a side, epsilon {m['epsilon']:.2g}: plan cost {m['sinkhorn_plan_cost']:.4f}, "
                      f"debiased divergence {m['sinkhorn_divergence']:.4f} ({m['sinkhorn_seconds']:.0f} s)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,4,8,16,32,64")
    parser.add_argument("--methods", default="enot,w2ot")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--mixture-steps", type=int, default=1000)
    parser.add_argument("--no-mixture", action="store_true")
    parser.add_argument("--extra", action="append", default=[], help="trainer option override, e.g. quadratic=False")
    parser.add_argument("--output")
    parser.add_argument("--from-json", nargs="+", help="rebuild the report from runs' stderr (one JSON result a line)")
    args = parser.parse_args()
    if args.from_json:
        rows = []
        for path in args.from_json:
            with open(path) as fh:
                rows += [json.loads(line) for line in fh if line.startswith("{")]
        mixture = next((r for r in rows if "sinkhorn_plan_cost" in r), None)
        text = report([r for r in rows if "dim" in r], mixture, args, float("nan"))
        print(text)
        if args.output:
            with open(args.output, "w") as fh:
                fh.write(text)
        return
    extra = {k: ast.literal_eval(v) for k, v in (e.split("=", 1) for e in args.extra)}
    specs = [dict(dim=int(d), method=m, steps=args.steps, eval_every=args.eval_every, **extra)
             for d in args.dims.split(",") for m in args.methods.split(",")]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, CASE, json.dumps(s), os.path.join(HERE, "benchmarks")) for s in specs]
        mix = None if args.no_mixture else pool.submit(run, MIXTURE, str(args.mixture_steps))
        results = []
        for spec, fut in zip(specs, futures):
            res = fut.result()
            results.append({**spec, **res})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        mixture = None if mix is None else mix.result()
        if mixture is not None:
            print(json.dumps(mixture), file=sys.stderr, flush=True)
    text = report(results, mixture, args, time.perf_counter() - start)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
