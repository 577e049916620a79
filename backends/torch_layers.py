"""``torch.nn.Module`` layers over softk's operators: thin wrappers, no numerics.

Each layer holds its static settings (``k``, ``epsilon``, ...) and calls the
public operator, so it works wherever the operator does: autograd, ``torch.func``,
``torch.compile`` (with graph breaks at the solvers' loops). ``epsilon`` is a
fixed hyperparameter: softk has no gradient with respect to it.

>>> import torch
>>> from softk.backends.torch_layers import SoftTopK
>>> layer = SoftTopK(2, epsilon=0.5, scale="scores")
>>> scores = torch.tensor([[0.1, 3.0, -2.0, 1.0]], requires_grad=True)
>>> mask = layer(scores)
>>> round(float(mask.detach().sum()), 6)
2.0
"""

from __future__ import annotations

from typing import Any

import torch

import softk
from softk.topp import soft_topp

__all__ = ["SoftTopK", "SoftTopP", "SinkhornDivergenceLoss", "SpearmanLoss"]


class SoftTopK(torch.nn.Module):
    """Soft top-k mask along ``axis`` (:func:`softk.soft_topk`; ``straight_through`` for a hard forward)."""

    def __init__(self, k: int, *, epsilon: float = 0.1, **options: Any) -> None:
        super().__init__()
        self.k, self.epsilon, self.options = k, float(epsilon), options

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return softk.soft_topk(scores, self.k, epsilon=self.epsilon, **self.options)

    def extra_repr(self) -> str:
        return f"k={self.k}, epsilon={self.epsilon}" + "".join(f", {k}={v!r}" for k, v in self.options.items())


class SoftTopP(torch.nn.Module):
    """Soft nucleus mask of mass ``p`` over the last axis of the logits (:func:`softk.soft_topp`)."""

    def __init__(self, p: float, *, epsilon: float = 0.1, **options: Any) -> None:
        super().__init__()
        self.p, self.epsilon, self.options = float(p), float(epsilon), options

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return soft_topp(logits, self.p, epsilon=self.epsilon, **self.options)

    def extra_repr(self) -> str:
        return f"p={self.p}, epsilon={self.epsilon}"


class SinkhornDivergenceLoss(torch.nn.Module):
    """Debiased Sinkhorn divergence between point clouds ``(..., n, d)`` and ``(..., m, d)``
    (:func:`softk.sinkhorn_divergence`), averaged over any batch dimensions."""

    def __init__(self, *, epsilon: float = 0.1, **options: Any) -> None:
        super().__init__()
        self.epsilon, self.options = float(epsilon), options

    def forward(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        return softk.sinkhorn_divergence(x, y, a, b, epsilon=self.epsilon, **self.options).mean()


class SpearmanLoss(torch.nn.Module):
    """``1 - rho`` with ``rho`` the Spearman correlation between the soft ranks of the
    predictions (:func:`softk.soft_rank`) and the ranks of the targets, along the last
    axis and averaged over the batch: 0 when the orders agree."""

    def __init__(self, *, epsilon: float = 0.01, **options: Any) -> None:
        super().__init__()
        self.epsilon, self.options = float(epsilon), options

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ranks = softk.soft_rank(prediction, epsilon=self.epsilon, **self.options)
        target_ranks = torch.argsort(torch.argsort(target, dim=-1), dim=-1).to(ranks.dtype) + 1.0
        ranks = ranks - ranks.mean(-1, keepdim=True)
        target_ranks = target_ranks - target_ranks.mean(-1, keepdim=True)
        rho = (ranks * target_ranks).sum(-1) / (ranks.norm(dim=-1) * target_ranks.norm(dim=-1))
        return (1.0 - rho).mean()
