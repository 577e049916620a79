"""Markdown tables from the asv results of one commit: the table in docs/performance.md.

    python asv_bench/report.py                # the newest results file in asv_bench/results/
    python asv_bench/report.py --commit 50a8295 --output table.md

It prints the machine (asv's machine.json), the commit and how the run was
made, then two tables: every operator's forward and forward + backward time
per backend and size (from ``benchmarks/operators.py``) with the peak memory
of the process, and softk against the peers measured in the same run, with
the ratio peer / softk (above 1: softk is faster).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
OPERATORS = ["SoftTopk", "SoftTopp", "SoftTopkSorted", "SoftSort", "SoftRank", "SoftQuantile", "Sinkhorn", "SinkhornPlan",
             "SinkhornApply", "SinkhornDivergence", "BeamSearch"]
BACKENDS = ["numpy", "torch", "jax"]


def load(commit: str | None) -> tuple[dict, dict, pathlib.Path]:
    files = sorted(RESULTS.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    files = [f for f in files if f.name != "machine.json" and (commit is None or f.name.startswith(commit[:8]))]
    if not files:
        sys.exit(f"no asv results{' for ' + commit if commit else ''} in {RESULTS}")
    path = files[-1]
    data = json.loads(path.read_text())
    machine = json.loads((path.parent / "machine.json").read_text())
    return data, machine, path


def table(data: dict) -> dict[tuple[str, tuple[str, ...]], float]:
    """``{(benchmark, params): value}`` with NaN for cases that did not run."""
    columns = data["result_columns"]
    out = {}
    for name, row in data["results"].items():
        entry = dict(zip(columns, row))
        params = [[p.strip("'") for p in values] for values in entry.get("params") or []]
        values = entry["result"] if params else entry["result"][:1]
        for combo, value in zip(itertools.product(*params) if params else [()], values):
            out[(name, tuple(combo))] = float("nan") if value is None else float(value)
    return out


def seconds(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value * 1e9:.3g} ns"


def megabytes(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value / 2**20:.0f}"


def ratio(peer: float, ours: float) -> str:
    if math.isnan(peer) or math.isnan(ours) or ours == 0:
        return "n/a"
    r = peer / ours
    return f"{r:.0f}" if r >= 100 else f"{r:.2g}"


def operators_table(values: dict) -> list[str]:
    lines = ["| operator | n | " + " | ".join(f"{b} fwd | {b} fwd+bwd" for b in BACKENDS) + " | peak MB (torch) |",
             "|---|---:|" + "---:|" * (2 * len(BACKENDS) + 1)]
    for op in OPERATORS:
        sizes = sorted({int(p[1]) for (name, p) in values if name.startswith(f"operators.{op}Forward")})
        for n in sizes:
            cells = []
            for backend in BACKENDS:
                key = (backend, str(n))
                cells.append(seconds(values.get((f"operators.{op}Forward.time_forward", key), math.nan)))
                cells.append(seconds(values.get((f"operators.{op}ForwardBackward.time_forward_backward", key), math.nan)))
            peak = values.get((f"operators.{op}ForwardBackward.peakmem_forward_backward", ("torch", str(n))), math.nan)
            lines.append(f"| {op} | {n:,} | " + " | ".join(cells) + f" | {megabytes(peak)} |")
    return lines


def peers_table(values: dict) -> list[str]:
    """softk against the peers of the same run: ``(what, softk key, peer key)``."""
    rows = []
    for n in ("1000", "10000", "100000"):
        for eps in ("0.1", "0.001"):
            fwd = "soft_topk.TimeForward.time_forward"
            bwd = "soft_topk.TimeForwardBackward.time_forward_backward"
            rows.append((f"soft_topk fwd, torch, 32 x {int(n):,}, eps {eps}", "torch.topk (hard)",
                         (fwd, ("torch", "softk", n, eps)), (fwd, ("torch", "peer", n, eps))))
            rows.append((f"soft_topk fwd, JAX jit, 32 x {int(n):,}, eps {eps}", "OTT topk_mask",
                         (fwd, ("jax", "softk", n, eps)), (fwd, ("jax", "peer", n, eps))))
            rows.append((f"soft_topk fwd+bwd, JAX jit, 32 x {int(n):,}, eps {eps}", "OTT topk_mask",
                         (bwd, ("jax", "softk", n, eps)), (bwd, ("jax", "peer", n, eps))))
    for backend, n in itertools.product(("numpy", "torch"), ("500", "2000")):
        key = "sinkhorn.Sinkhorn.time_forward"
        for peer, label in (("pot_log", "POT sinkhorn_log"), ("pot", "POT sinkhorn (kernel)")):
            rows.append((f"sinkhorn fwd, {backend}, n = m = {n}, eps 1e-3", label,
                         (key, (backend, "softk", n)), (key, (backend, peer, n))))
    for n in ("100", "1000"):
        key = "divergence.DivergenceValueAndGrad.time_value_and_grad"
        for peer, label in (("geomloss", "GeomLoss (torch)"), ("ott", "OTT sinkdiv (JAX jit)")):
            ours = "softk_torch" if peer == "geomloss" else "softk_jax"
            rows.append((f"sinkhorn_divergence value+grad, n = {int(n):,}, eps 1e-2 ({ours})", label,
                         (key, (ours, n)), (key, (peer, n))))
    for eps in ("0.01", "0.001"):
        key = "sorting.TimeSortedTopk.time_forward_backward"
        rows.append((f"soft_topk_sorted fwd+bwd, torch, n = 10,000, k = 16, eps {eps}", "200-iteration Sinkhorn",
                     (key, ("softk", eps)), (key, ("sinkhorn_200", eps))))
    lines = ["| case | peer | softk | peer time | peer / softk |", "|---|---|---:|---:|---:|"]
    for what, peer, ours_key, peer_key in rows:
        ours, theirs = values.get(ours_key, math.nan), values.get(peer_key, math.nan)
        if math.isnan(ours) and math.isnan(theirs):
            continue
        lines.append(f"| {what} | {peer} | {seconds(ours)} | {seconds(theirs)} | {ratio(theirs, ours)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", help="commit (prefix) whose results to report; default: the newest file")
    parser.add_argument("--output", help="write the markdown here instead of printing it")
    args = parser.parse_args(argv)
    data, machine, path = load(args.commit)
    values = table(data)
    ram = int(machine.get("ram") or 0) / 2**30
    lines = [
        f"Commit `{data['commit_hash'][:8]}`, results file `{path.parent.name}/{path.name}`.",
        f"Machine `{machine.get('machine')}`: {machine.get('cpu')}, {machine.get('num_cpu')} CPUs, {ram:.0f} GiB,"
        f" {machine.get('os')}; Python {data.get('python')}.",
        "",
        *operators_table(values),
        "",
        *peers_table(values),
    ]
    text = "\n".join(lines) + "\n"
    if args.output:
        pathlib.Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
