"""A PyTorch mixture-of-experts layer whose router is :func:`softk.moe.moe_route` (OT routing).

Nothing numerical lives here: the routing is the core's, its gradient flows
through the core's registered VJP (the plan's implicit derivative) and the
softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from softk.moe import moe_route

__all__ = ["OTRouter", "MoE"]


class OTRouter(nn.Module):
    """Linear router scores, then sparsity-constrained OT: ``(combine, dispatch, dropped)``.

    ``capacity`` is per expert (``per="expert"``) or per token (``per="token"``);
    see :func:`softk.moe.moe_route`. Input ``(tokens, dim)`` or ``(batch, tokens, dim)``.

    >>> import torch
    >>> router = OTRouter(8, experts=4, capacity=3)
    >>> r = router(torch.randn(12, 8))
    >>> tuple(r.combine.shape), int(r.dispatch.sum(0).max()) <= 3
    ((12, 4), True)
    """

    def __init__(self, dim: int, experts: int, capacity: int, *, gamma: float = 0.1, per: str = "expert"):
        super().__init__()
        self.scores = nn.Linear(dim, experts)
        self.capacity, self.gamma, self.per = capacity, gamma, per

    def forward(self, x: torch.Tensor):
        logits = self.scores(x).to(torch.float64)
        r = moe_route(logits, self.capacity, gamma=self.gamma, per=self.per)
        return type(r)(combine=r.combine.to(x.dtype), dispatch=r.dispatch.to(x.dtype), dropped=r.dropped.to(x.dtype))


class MoE(nn.Module):
    """``y = x + sum_e combine[:, e] * expert_e(x)`` with an :class:`OTRouter` (or any router
    returning ``combine`` of shape (tokens, experts)). Experts run on every token here (dense,
    for clarity at small sizes); the dispatch mask says which outputs are kept."""

    def __init__(self, dim: int, experts: int, hidden: int, router: nn.Module):
        super().__init__()
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)) for _ in range(experts))
        self.router = router

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        r = self.router(x)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=-2)  # (tokens, experts, dim)
        return x + (r.combine.unsqueeze(-1) * outputs).sum(-2), r
