"""The per-call floor of soft top-k in PyTorch: a minimal hand-written ``autograd.Function``.

The same method as ``softk.soft_topk`` (exact threshold, the paper's scale
``M = R^2``): the centre between the k-th and (k+1)-th scores, a fixed 4
Newton steps on the log-odds of the total with ``torch.sigmoid`` (no
convergence test, no host round trip, no argument checks, no safeguards) and
the closed-form O(n) backward (treating ``M`` as a constant). It is not a
usable operator (it neither checks nor guarantees convergence); it measures
what any eager PyTorch implementation of the method costs per call on this
machine, so that ``compare_small.py`` can put softk's small-call times in
proportion.
"""

from __future__ import annotations

import math

import torch

NEWTON_STEPS = 4


class FloorTopk(torch.autograd.Function):
    """``FloorTopk.apply(x, k, epsilon)``: the soft top-k mask of the largest entries (last axis)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, epsilon: float) -> torch.Tensor:
        n = x.shape[-1]
        best = torch.topk(x, k + 1, dim=-1)[0]
        centre = 0.5 * (best[..., k - 1 : k] + best[..., k : k + 1])
        radius = torch.maximum(-x.amin(-1, keepdim=True) - 0.5, best[..., :1] + 0.5) + 0.5
        scale = 2.0 / (radius * radius * epsilon)
        z = ((x - centre) * scale).clamp(-30.0, 30.0)
        tau = torch.zeros_like(centre)
        log_odds = math.log(k / (n - k))
        for _ in range(NEWTON_STEPS):
            a = torch.sigmoid(z - tau)
            total = a.sum(-1, keepdim=True)
            curvature = (a * (1.0 - a)).sum(-1, keepdim=True).clamp_min(1e-30)
            selected, rest = total.clamp_min(1e-30), (n - total).clamp_min(1e-30)
            tau = tau + ((selected / rest).log() - log_odds) * (selected * rest) / (curvature * n)
        a = torch.sigmoid(z - tau)
        ctx.save_for_backward(a * (1.0 - a), scale)
        return a

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        d, scale = ctx.saved_tensors
        mean = (d * grad).sum(-1, keepdim=True) / d.sum(-1, keepdim=True)
        return d * (grad - mean) * scale, None, None


def floor_topk(x: torch.Tensor, k: int, epsilon: float) -> torch.Tensor:
    return FloorTopk.apply(x, k, epsilon)
