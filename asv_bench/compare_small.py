"""Small PyTorch calls, one run: softk.soft_topk (eager and compiled) against torch.topk and LapSum.

Per size (float32, k as listed, epsilon 0.1 in the paper's normalisation; LapSum at
the same temperature in score units, ``alpha = M epsilon / 2``), one thread:

* ``torch.topk`` forward (the hard operator, the issue's yardstick);
* LapSum forward + backward (:mod:`lapsum`, our transcription of its closed form);
* ``softk.soft_topk`` forward + backward, eager;
* the same under ``torch.compile(fullgraph=True, dynamic=False)`` (compiled per size, before timing);
* the floor (:mod:`floor_topk`: a minimal hand-written ``autograd.Function`` of the same
  method, fixed steps and no checks), eager and compiled: what the method costs per call
  in PyTorch on this machine at best.

Forward + backward is ``torch.autograd.grad(op(x), x, v)`` with a random ``v``.
Times are CPU time (``time.process_time``) per call, in microseconds: the best
of ``--repeat`` rounds of ``--number`` calls (the least disturbed by other
processes on a shared machine). The rounds interleave the candidates (round r
times each of them in turn), so a burst of load falls on all of them alike, and
each ratio to ``torch.topk`` is the median of the per-round ratios.

    OMP_NUM_THREADS=1 python asv_bench/compare_small.py [--repeat 7] [--number 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

import softk

sys.path.insert(0, os.path.dirname(__file__))
from floor_topk import floor_topk  # noqa: E402
from lapsum import lapsum_topk  # noqa: E402

SIZES = ((32, 100, 5), (32, 1000, 10), (256, 100, 5), (32, 100_000, 5))


def interleaved(fns: list, number: int, repeat: int) -> tuple[list[float], list[float]]:
    """Per candidate: the best CPU time per call over ``repeat`` interleaved rounds, and the
    median over rounds of its time divided by the first candidate's in the same round."""
    for fn in fns:
        fn()
    rounds = []
    for _ in range(repeat):
        times = []
        for fn in fns:
            start = time.process_time()
            for _ in range(number):
                fn()
            times.append((time.process_time() - start) / number)
        rounds.append(times)
    best = [min(r[i] for r in rounds) for i in range(len(fns))]
    ratios = [statistics.median(r[i] / r[0] for r in rounds) for i in range(len(fns))]
    return best, ratios


def row(batch: int, n: int, k: int, epsilon: float, number: int, repeat: int) -> str:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n, generator=gen).requires_grad_(True)
    v = torch.randn(batch, n, generator=gen)
    radius = float(torch.maximum(x.max() - 0.5, 0.5 - x.min()) + 0.5)  # the paper's M = R^2 (largest row bound)
    alpha = radius * radius * epsilon / 2.0

    def grad_of(op):
        return lambda: torch.autograd.grad(op(x), x, v)

    eager = grad_of(lambda x: softk.soft_topk(x, k, epsilon=epsilon))
    compiled_op = torch.compile(lambda x: softk.soft_topk(x, k, epsilon=epsilon), fullgraph=True, dynamic=False)
    compiled = grad_of(compiled_op)
    lapsum = grad_of(lambda x: lapsum_topk(x, k, alpha))
    floor = grad_of(lambda x: floor_topk(x, k, epsilon))
    floor_compiled = grad_of(torch.compile(lambda x: floor_topk(x, k, epsilon), fullgraph=True, dynamic=False))
    scale = max(1, n // 1000)
    number = max(1, number // scale)
    times, ratios = interleaved([lambda: torch.topk(x.detach(), k), lapsum, eager, compiled, floor, floor_compiled], number, repeat)
    cells = " | ".join(f"{t * 1e6:.0f} us ({r:.0f}x)" for t, r in zip(times[1:], ratios[1:]))
    return f"| {batch} x {n}, {k} | {times[0] * 1e6:.1f} us | {cells} | {times[1] / times[2]:.2f} / {times[1] / times[3]:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--epsilon", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    print(f"torch {torch.__version__}, 1 thread, float32, epsilon {args.epsilon}, CPU time, best of {args.repeat} interleaved rounds x {args.number} calls, (median ratio to torch.topk)\n")
    print("| batch x n, k | torch.topk fwd | LapSum fwd+bwd | softk eager fwd+bwd | softk compiled fwd+bwd "
          "| floor eager | floor compiled | LapSum / softk (eager / compiled) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, n, k in SIZES:
        print(row(batch, n, k, args.epsilon, args.number, args.repeat), flush=True)


if __name__ == "__main__":
    main()
