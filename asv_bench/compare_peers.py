#!/usr/bin/env python
"""softk against its performance targets and peers, measured in one run.

Prints a markdown report (and writes it with ``--output FILE``):

1. PyTorch, float32, batch 32 x n = 1e5, k = 10, epsilon in {0.1, 1e-3}: softk
   forward, softk forward + backward, ``torch.topk`` forward, and the ratio
   softk forward + backward / ``torch.topk`` forward (target: <= 10).
2. JAX under ``jax.jit``, same shape: softk vs OTT-JAX
   ``ott.tools.soft_sort.topk_mask`` (forward, forward + backward; OTT with its
   defaults first, then with ``implicit_diff=None`` if the defaults fail or give a
   non-finite gradient). Target: softk >= 100x faster forward + backward.
3. Finiteness of softk's JAX gradients (jit) for epsilon in {1, 0.1, 1e-2, 1e-3,
   1e-4}, float32 and float64, and a float64 finite-difference check
   (``jax.test_util.check_grads``, reverse mode, order 1) at a small size.
4. Peak memory of softk's PyTorch forward + backward, each in a fresh subprocess:
   the resident-memory high-water mark above the resident memory just before the
   call (``/proc/self/clear_refs`` reset; ``ru_maxrss`` as a fallback).

Every time is the median of repeated calls after one warm-up call (JAX functions
are compiled ahead of time, compile time reported separately). A measurement
stops early once its calls have taken ``--budget`` seconds (at least one call is
always timed; a call slower than half the budget is timed once): the sample
count is shown next to each time.

Usage::

    python asv_bench/compare_peers.py                       # full run, a few minutes
    python asv_bench/compare_peers.py --quick               # n = 1e4, fewer repeats
    python asv_bench/compare_peers.py --output asv_bench/LAST_RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

K = 10
BATCH = 32
TORCH_EPSILONS = (0.1, 1e-3)
GRAD_EPSILONS = (1.0, 0.1, 1e-2, 1e-3, 1e-4)
SPEEDUP_TARGET = 100.0
TOPK_RATIO_TARGET = 10.0


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    samples: list = field(default_factory=list)
    cpu_samples: list = field(default_factory=list)  # process CPU time (all threads) per call
    output: Any = None
    error: str | None = None
    seconds_to_error: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples) if self.cpu_samples else float("nan")

    def cell(self) -> str:
        if not self.ok:
            return f"failed after {fmt_s(self.seconds_to_error)}"
        if len(self.samples) == 1:
            return f"{fmt_s(self.median)} (1)"
        return f"{fmt_s(self.median)} (min {fmt_s(min(self.samples))}, {len(self.samples)})"


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all cores busy over ``interval`` seconds (from /proc/stat), NaN if unknown."""
    def ticks():
        with open("/proc/stat") as f:
            parts = [float(t) for t in f.readline().split()[1:]]
        return sum(parts), parts[3] + parts[4]  # total, idle + iowait

    try:
        total0, idle0 = ticks()
        time.sleep(interval)
        total1, idle1 = ticks()
    except OSError:
        return float("nan")
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1.0)


def wait_for_idle(max_wait: float, threshold: float = 0.2) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` of the CPU; return the last reading."""
    deadline = time.perf_counter() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.perf_counter() < deadline:
        busy = cpu_busy(2.0)
    return busy


def fmt_s(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def short_error(exc: BaseException) -> str:
    """One informative sentence from an exception (OTT's lineax errors are pages long)."""
    text = str(exc)
    found = re.search(r"EquinoxRuntimeError:\s*(.*?\.)(\s|$)", text, flags=re.DOTALL)
    if found:
        return f"{type(exc).__name__}: {' '.join(found.group(1).split())}"
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__


def measure(fn: Callable[[], Any], repeats: int, budget: float) -> Timing:
    """One warm-up call, then up to ``repeats`` timed calls within ``budget`` seconds.

    Records wall time (``perf_counter``) and process CPU time (``process_time``,
    all threads) of each call.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - peers fail in many ways; record it
        return Timing(error=short_error(exc), seconds_to_error=time.perf_counter() - start)
    first = time.perf_counter() - start
    if first > budget / 2:
        return Timing([first], [time.process_time() - cpu_start], out)
    samples: list[float] = []
    cpu_samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < repeats:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        samples.append(time.perf_counter() - t)
        cpu_samples.append(time.process_time() - c)
        if time.perf_counter() - began > budget:
            break
    return Timing(samples, cpu_samples, out)


def nonfinite_fraction(a: Any) -> float:
    a = np.asarray(a)
    return float(np.mean(~np.isfinite(a)))


# --------------------------------------------------------------------------- data


def make_data(batch: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n), dtype=np.float32)
    v = rng.standard_normal((batch, n), dtype=np.float32)
    return x, v


# --------------------------------------------------------------------------- 1. PyTorch


def torch_section(args, lines: list[str], summary: dict) -> None:
    import torch

    import softk

    n = args.n
    x_np, v_np = make_data(BATCH, n)
    x, v = torch.from_numpy(x_np), torch.from_numpy(v_np)
    xr = x.clone().requires_grad_(True)
    lines += [
        f"## 1. PyTorch (float32, batch {BATCH} x n = {n:,}, k = {K}, {torch.get_num_threads()} threads)",
        "",
        "| epsilon | softk forward | softk forward+backward | torch.topk forward "
        f"| ratio fwd+bwd / topk | target <= {TOPK_RATIO_TARGET:g} |",
        "|---|---|---|---|---|---|",
    ]
    repeats = 3 * args.repeats  # millisecond calls: more samples steady the medians (torch.topk's swung 2.0-2.9 ms)

    def run_eps(eps):
        fwd = measure(lambda: softk.soft_topk(x, K, epsilon=eps), repeats, args.budget)

        def fwd_bwd():
            softk.soft_topk(xr, K, epsilon=eps).backward(v)
            grad, xr.grad = xr.grad, None
            return grad

        fb = measure(fwd_bwd, repeats, args.budget)
        topk = measure(lambda: torch.topk(x, K, dim=-1), repeats, args.budget)
        return fwd, fb, topk

    for eps in TORCH_EPSILONS:
        fwd, fb, topk = run_eps(eps)
        ratio = fb.median / topk.median if fb.ok and topk.ok else float("nan")
        met = "yes" if ratio <= TOPK_RATIO_TARGET else "**no**"
        summary[f"torch_ratio_eps{eps:g}"] = ratio
        lines.append(f"| {eps:g} | {fwd.cell()} | {fb.cell()} | {topk.cell()} | {ratio:.1f}x | {met} |")

    # The same with one thread, in process CPU time: insensitive to other processes
    # competing for the CPU (two OpenMP threads on a busy 2-core machine spin and stall).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines += [
            "",
            "Same, with `torch.set_num_threads(1)`, in process CPU time (median; robust to a busy machine):",
            "",
            "| epsilon | softk forward | softk forward+backward | torch.topk forward | ratio fwd+bwd / topk "
            f"| target <= {TOPK_RATIO_TARGET:g} |",
            "|---|---|---|---|---|---|",
        ]
        for eps in TORCH_EPSILONS:
            fwd, fb, topk = run_eps(eps)
            ratio = fb.cpu_median / topk.cpu_median
            met = "yes" if ratio <= TOPK_RATIO_TARGET else "**no**"
            summary[f"torch_1thread_cpu_ratio_eps{eps:g}"] = ratio
            lines.append(
                f"| {eps:g} | {fmt_s(fwd.cpu_median)} | {fmt_s(fb.cpu_median)} | {fmt_s(topk.cpu_median)} "
                f"| {ratio:.1f}x | {met} |"
            )
    finally:
        torch.set_num_threads(threads)
    lines.append("")


# --------------------------------------------------------------------------- 2. JAX vs OTT


def jax_section(args, lines: list[str], summary: dict) -> None:
    import jax
    import jax.numpy as jnp

    import softk

    try:
        from ott.tools import soft_sort
    except Exception as exc:  # noqa: BLE001
        soft_sort = None
        ott_missing = "not installed"
        ott_reason = short_error(exc)
    n = args.ott_n
    x_np, v_np = make_data(BATCH, n)
    x, v = jnp.asarray(x_np), jnp.asarray(v_np)

    def compiled(fn, *example):
        t = time.perf_counter()
        exe = jax.jit(fn).lower(*example).compile()
        return exe, time.perf_counter() - t

    def timed_forward(fn):
        exe, c = compiled(fn, x)
        return measure(lambda: exe(x).block_until_ready(), args.repeats, args.budget), c

    def timed_grad(fn):
        exe, c = compiled(jax.grad(lambda x, v: jnp.vdot(fn(x), v)), x, v)
        return measure(lambda: exe(x, v).block_until_ready(), args.repeats, args.budget), c

    def sum_error(t: Timing) -> str:
        if not t.ok:
            return "n/a"
        return f"{float(np.max(np.abs(np.asarray(t.output, dtype=np.float64).sum(-1) - K))):.2g}"

    def grad_status(t: Timing) -> str:
        if not t.ok:
            return f"failed: {t.error}"
        bad = nonfinite_fraction(t.output)
        return "finite" if bad == 0 else f"NaN/inf in {bad:.0%} of entries"

    lines += [
        f"## 2. JAX under jax.jit (float32, batch {BATCH} x n = {n:,}, k = {K})",
        "",
        "OTT-JAX `ott.tools.soft_sort.topk_mask(x, k=10, epsilon=eps)`: its epsilon is on its own cost scale "
        "(inputs squashed to [0, 1], targets {0, 1}), as softk's is relative to a normalised cost; the same "
        "number is passed to both. Times: median (samples). `max|sum-k|`: worst row of the mask's sum minus k.",
        "",
        "| epsilon | softk fwd | softk fwd+bwd | OTT fwd | OTT fwd+bwd, defaults | OTT fwd+bwd, implicit_diff=None "
        f"| fwd speed-up | fwd+bwd speed-up | target >= {SPEEDUP_TARGET:g}x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for eps in TORCH_EPSILONS:
        f_softk = lambda x, eps=eps: softk.soft_topk(x, K, epsilon=eps)  # noqa: E731
        s_fwd, c1 = timed_forward(f_softk)
        s_fb, c2 = timed_grad(f_softk)
        notes.append(
            f"- softk, eps={eps:g}: compile {fmt_s(c1)} (fwd), {fmt_s(c2)} (fwd+bwd); max|sum-k| = {sum_error(s_fwd)}; "
            f"gradient {grad_status(s_fb)}."
        )
        if soft_sort is None:
            lines.append(
                f"| {eps:g} | {s_fwd.cell()} | {s_fb.cell()} | {ott_missing} | {ott_missing} | {ott_missing} "
                "| n/a | n/a | n/a |"
            )
            continue
        f_ott = lambda x, eps=eps, **kw: soft_sort.topk_mask(x, k=K, epsilon=eps, **kw)  # noqa: E731
        o_fwd, c3 = timed_forward(f_ott)
        o_def, c4 = timed_grad(f_ott)
        notes.append(
            f"- OTT, eps={eps:g}: compile {fmt_s(c3)} (fwd), {fmt_s(c4)} (fwd+bwd defaults); "
            f"forward max|sum-k| = {sum_error(o_fwd)}, non-finite fraction {nonfinite_fraction(o_fwd.output) if o_fwd.ok else 'n/a'}; "
            f"defaults gradient: {grad_status(o_def)}"
        )
        def finite(t: Timing | None) -> bool:
            return t is not None and t.ok and nonfinite_fraction(t.output) == 0

        o_unr = None
        if finite(o_def):
            unr_cell = "not needed"
        else:
            o_unr, c5 = timed_grad(lambda x, eps=eps: f_ott(x, eps, implicit_diff=None))
            notes.append(f"- OTT, eps={eps:g}, implicit_diff=None: compile {fmt_s(c5)}; gradient: {grad_status(o_unr)}")
            unr_cell = o_unr.cell() + ("" if not o_unr.ok or finite(o_unr) else ", **NaN grad**")
            if not o_unr.ok:
                unr_cell += " (error)"
        def_cell = o_def.cell() + ("" if not o_def.ok or finite(o_def) else ", **NaN grad**")
        if not o_def.ok:
            def_cell += " (error)"
        # Compare with OTT's fastest finite gradient; if none is finite, with its fastest
        # completed one (the conservative choice), flagged.
        variants = [(t, name) for t, name in ((o_def, "defaults"), (o_unr, "implicit_diff=None")) if t is not None and t.ok]
        pool = [(t, name) for t, name in variants if finite(t)] or variants
        best, best_name = min(pool, key=lambda tn: tn[0].median) if pool else (None, "none")
        fwd_speedup = o_fwd.median / s_fwd.median if o_fwd.ok else float("nan")
        fb_speedup = best.median / s_fb.median if best is not None else float("nan")
        if best is None:
            fb_cell, met = "n/a (OTT failed)", "n/a"
        elif finite(best):
            fb_cell = f"{fb_speedup:.1f}x (vs {best_name})"
            met = "yes" if fb_speedup >= SPEEDUP_TARGET else "**no**"
        else:
            fb_cell = f"{fb_speedup:.1f}x (vs {best_name}, whose gradient is NaN)"
            met = ("yes" if fb_speedup >= SPEEDUP_TARGET else "**no**") + " (OTT gradient NaN)"
        summary[f"jax_fb_speedup_eps{eps:g}"] = fb_speedup
        if best is not None and o_fwd.ok:
            notes.append(
                f"- eps={eps:g}, process CPU time (all threads) medians: softk fwd {fmt_s(s_fwd.cpu_median)}, "
                f"fwd+bwd {fmt_s(s_fb.cpu_median)}; OTT fwd {fmt_s(o_fwd.cpu_median)}, fwd+bwd ({best_name}) "
                f"{fmt_s(best.cpu_median)}; CPU-time speed-ups: fwd {o_fwd.cpu_median / s_fwd.cpu_median:.1f}x, "
                f"fwd+bwd {best.cpu_median / s_fb.cpu_median:.1f}x."
            )
        lines.append(
            f"| {eps:g} | {s_fwd.cell()} | {s_fb.cell()} | {o_fwd.cell()} | {def_cell} | {unr_cell} "
            f"| {fwd_speedup:.1f}x | {fb_cell} | {met} |"
        )
    if soft_sort is None:
        notes.append(f"- OTT-JAX not installed or not importable: {ott_reason}")
    lines += ["", *notes, ""]


# --------------------------------------------------------------------------- 3. gradients


def grads_section(args, lines: list[str]) -> None:
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import softk

    n = args.grad_n
    lines += [
        f"## 3. softk JAX gradients under jax.jit (batch {BATCH} x n = {n:,}, k = {K}, random cotangent)",
        "",
        "| epsilon | float32 | float64 | float64 finite differences (4 x 64, rev, order 1) |",
        "|---|---|---|---|",
    ]
    x_np, v_np = make_data(BATCH, n, seed=1)
    small = np.random.default_rng(2).standard_normal((4, 64))
    with jax.enable_x64(True):
        for eps in GRAD_EPSILONS:
            cells = []
            for dtype in (jnp.float32, jnp.float64):
                x, v = jnp.asarray(x_np, dtype=dtype), jnp.asarray(v_np, dtype=dtype)
                g = jax.jit(jax.grad(lambda x, v, eps=eps: jnp.vdot(softk.soft_topk(x, K, epsilon=eps), v)))
                try:
                    out = np.asarray(g(x, v))
                    bad = nonfinite_fraction(out)
                    cells.append(
                        f"finite, max|g| = {float(np.max(np.abs(out))):.3g}"
                        if bad == 0
                        else f"**non-finite in {bad:.0%}**"
                    )
                except Exception as exc:  # noqa: BLE001
                    cells.append(f"**failed: {short_error(exc)}**")
            # Finite differences: the step must resolve the sigmoid's width (~ eps * M / 2).
            xs = jnp.asarray(small, dtype=jnp.float64)
            f = jax.jit(lambda x, eps=eps: softk.soft_topk(x, K, epsilon=eps))
            step = min(1e-4, eps * 1e-3)
            try:
                check_grads(f, (xs,), order=1, modes=["rev"], eps=step)
                cells.append(f"pass (step {step:g})")
            except AssertionError as exc:
                cells.append(f"**fail** (step {step:g}): {' '.join(str(exc).split())[:160]}")
            except Exception as exc:  # noqa: BLE001
                cells.append(f"**error**: {short_error(exc)}")
            lines.append(f"| {eps:g} | " + " | ".join(cells) + " |")
    lines.append("")


# --------------------------------------------------------------------------- 4. memory


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def memory_worker(batch: int, n: int, eps: float) -> None:
    """Run in a fresh process: print JSON with the net peak of one forward + backward."""
    import torch

    import softk

    # Warm up autograd and the kernels at a small size, so one-time costs are not counted.
    w = torch.randn(2, 1000, requires_grad=True)
    softk.soft_topk(w, K, epsilon=eps).backward(torch.ones(2, 1000))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n, generator=gen).requires_grad_(True)
    v = torch.randn(batch, n, generator=gen)
    results = []
    for _ in range(2):
        gc.collect()
        before = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark (VmHWM)
            method = "VmHWM after clear_refs"
            softk.soft_topk(x, K, epsilon=eps).backward(v)
            peak = _status_kib("VmHWM")
        except OSError:
            method = "ru_maxrss"
            softk.soft_topk(x, K, epsilon=eps).backward(v)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        x.grad = None
        results.append((peak - before) * 1024)
    print(json.dumps({"net_bytes": max(results), "method": method, "rss_before_kib": before}))


def memory_section(args, lines: list[str], summary: dict) -> None:
    lines += [
        "## 4. Peak memory of softk PyTorch forward + backward (float32, k = 10, epsilon = 0.1)",
        "",
        "Each row is a fresh subprocess; net peak = resident high-water mark during one forward + backward "
        "minus the resident memory just before it (inputs x and cotangent v already allocated; "
        "the gradient x.grad, 4 bytes/element, is included). Max of two calls.",
        "",
        "| batch x n | input size (float32) | net peak | net peak / input size | bytes per element |",
        "|---|---|---|---|---|",
    ]
    per_element = []
    for batch, n in args.memory_shapes:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", str(batch), str(n), "0.1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            lines.append(f"| {batch} x {n:,} | | **worker failed**: {proc.stderr.strip()[-200:]} | | |")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        size = 4 * batch * n
        net = res["net_bytes"]
        per_element.append(net / (batch * n))
        lines.append(
            f"| {batch} x {n:,} | {size / 2**20:.1f} MiB | {net / 2**20:.1f} MiB | {net / size:.2f}x "
            f"| {net / (batch * n):.1f} |"
        )
        method = res["method"]
    if per_element:
        summary["memory_bytes_per_element"] = per_element
        lines += ["", f"Measured with {method}. Bytes per element stay within "
                  f"{min(per_element):.1f}-{max(per_element):.1f} across sizes: memory is O(batch x n)."]
    lines.append("")


# --------------------------------------------------------------------------- main


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("softk", "torch", "jax", "jaxlib", "ott"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n = 1e4 instead of 1e5, 3 repeats, 5 s budget, smaller memory sizes")
    p.add_argument("--repeats", type=int, help="timed calls per measurement (default 7, quick 3)")
    p.add_argument("--budget", type=float, help="seconds of timed calls per measurement (default 15, quick 5)")
    p.add_argument("--no-ott", action="store_true", help="skip OTT-JAX even if installed")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's default)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each section, wait up to this long for other processes to leave the CPU idle (< 20%% busy)",
    )
    p.add_argument(
        "--sections",
        default="torch,jax,grads,memory",
        help="comma-separated subset of torch,jax,grads,memory (default: all)",
    )
    p.add_argument("--output", help="also write the markdown report to this file")
    p.add_argument("--memory-worker", nargs=3, metavar=("BATCH", "N", "EPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_worker:
        b, n, e = args.memory_worker
        memory_worker(int(b), int(n), float(e))
        return 0

    # OTT's failing implicit backward logs a long traceback from inside jax.pure_callback.
    logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)
    if args.no_ott:
        sys.modules["ott"] = None  # makes "import ott..." raise ImportError

    args.n = 10_000 if args.quick else 100_000
    args.ott_n = args.n
    args.grad_n = 10_000
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.budget = args.budget or (5.0 if args.quick else 15.0)
    args.memory_shapes = (
        [(32, 10_000), (32, 100_000)] if args.quick else [(32, 10_000), (32, 100_000), (8, 1_000_000), (32, 1_000_000)]
    )

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    load_start = os.getloadavg()
    ver = versions()
    lines = [
        "# softk vs targets and peers (asv_bench/compare_peers.py)",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()}-core CPU ({cpu_model()}), {platform.system()} {platform.machine()}, no GPU",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        f"- command: `python {' '.join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))}`",
        f"- timing: median of up to {args.repeats} calls ({3 * args.repeats} in section 1) after one warm-up call, "
        f"at most ~{args.budget:g} s of calls per measurement; (N) = number of timed calls",
        "",
    ]
    summary: dict = {}
    sections = [
        ("torch", lambda: torch_section(args, lines, summary)),
        ("jax", lambda: jax_section(args, lines, summary)),
        ("grads", lambda: grads_section(args, lines)),
        ("memory", lambda: memory_section(args, lines, summary)),
    ]
    wanted = {name.strip() for name in args.sections.split(",")}
    unknown = wanted - {name for name, _ in sections}
    if unknown:
        p.error(f"unknown sections: {sorted(unknown)}")
    header_end = len(lines)
    busy_values = []
    busy_log = []
    for name, run in sections:
        if name not in wanted:
            continue
        busy = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else cpu_busy()
        busy_log.append(f"{name} {busy:.0%}")
        if name in ("torch", "jax"):  # memory and gradient checks do not depend on the load
            busy_values.append(busy)
        t = time.perf_counter()
        try:
            run()
        except ImportError as exc:
            lines += [f"## {name}: skipped ({short_error(exc)})", ""]
        print(f"[compare_peers] {name} section done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    load_end = os.getloadavg()
    lines += [
        "## Run",
        "",
        f"- wall time: {time.perf_counter() - start:.0f} s",
        f"- 1-minute load average at start / end: {load_start[0]:.2f} / {load_end[0]:.2f} "
        f"(on {os.cpu_count()} cores; other processes competing for the CPU inflate every time)",
        "- CPU busy (all processes, 1 s sample) just before each section: " + ", ".join(busy_log),
        "",
    ]
    if busy_values and max(busy_values) > 0.5:
        lines[header_end:header_end] = [
            f"**Warning: the CPU was busy with other processes during this run (up to {max(busy_values):.0%} "
            "busy just before a timing section; see the load average at the end). Wall times are inflated, "
            "short ones most (PyTorch's 2 OpenMP threads stall when descheduled): read the 1-thread "
            "CPU-time table and the CPU-time notes for the code's own cost.**",
            "",
        ]
    report = "\n".join(lines)
    print(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
