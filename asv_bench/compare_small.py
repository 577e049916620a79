"""Small eager PyTorch calls: softk.soft_topk (forward + backward) against torch.topk's forward.

Eager per-call overhead dominates at these sizes (validation, dispatch, the
solver's Python loop). Prints one markdown row per size: the median of
``--repeat`` timings of ``--number`` calls each, single thread.

Run: ``python asv_bench/compare_small.py [--repeat 7] [--number 50]``
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import torch

import softk

SIZES = ((32, 100, 5), (32, 1000, 10), (256, 100, 5), (8, 10_000, 50))


def _timer(fn, number: int, repeat: int) -> float:
    fn()
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=50)
    parser.add_argument("--epsilon", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, epsilon {args.epsilon}, float32, median of {args.repeat} x {args.number} calls")
    print("| batch x n, k | torch.topk fwd | softk fwd | softk fwd+bwd | ratio fwd+bwd / topk |")
    print("| --- | --- | --- | --- | --- |")
    for batch, n, k in SIZES:
        x = torch.randn(batch, n)
        xg = x.clone().requires_grad_()
        v = torch.randn(batch, n)

        def fwd_bwd():
            (g,) = torch.autograd.grad(softk.soft_topk(xg, k, epsilon=args.epsilon), xg, v)
            return g

        t_topk = _timer(lambda: torch.topk(x, k), args.number, args.repeat)
        t_fwd = _timer(lambda: softk.soft_topk(x, k, epsilon=args.epsilon), args.number, args.repeat)
        t_fb = _timer(fwd_bwd, args.number, args.repeat)
        print(f"| {batch} x {n}, {k} | {t_topk * 1e6:.1f} us | {t_fwd * 1e6:.1f} us | {t_fb * 1e6:.1f} us | {t_fb / t_topk:.0f}x |")


if __name__ == "__main__":
    main()
