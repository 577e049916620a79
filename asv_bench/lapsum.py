"""LapSum's soft top-k (Struski et al., ICML 2025), transcribed for the peer comparison.

LapSum replaces the logistic sigmoid by the Laplace CDF ``F(z) = e^z / 2``
(``z < 0``), ``1 - e^-z / 2`` (``z >= 0``), so the threshold ``t`` with
``sum_i F((x_i - t) / alpha) = k`` has a closed form: with the scores sorted
decreasingly, ``t`` between the j-th and (j+1)-th solves

    0.5 A_j u^2 - (j - k) u - 0.5 B_j = 0,   u = exp(t / alpha),
    A_j = sum_{i <= j} exp(-s_i / alpha),   B_j = sum_{i > j} exp(s_i / alpha),

one sort and two ``logcumsumexp`` passes, no iterations, no host round trip.
This is our transcription in plain PyTorch, log domain throughout; gradients
come from autograd (the authors' code has a hand-written backward). It is a
different operator from SOFT top-k (Laplace instead of logistic kernel); the
comparison is of cost per call at the same sizes.
"""

from __future__ import annotations

import torch


def lapsum_topk(x: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """Soft top-k mask along the last axis: ``F((x - t) / alpha)``, summing to ``k``."""
    n = x.shape[-1]
    s, _ = torch.sort(x, dim=-1, descending=True)
    z = s / alpha
    inf = torch.full_like(z[..., :1], torch.inf)
    tail = torch.logcumsumexp(z.flip(-1), dim=-1).flip(-1)  # log sum_{i >= j} exp(z_i)
    # segments j = 0..n: t between s_{j+1} and s_j (s_0 = +inf, s_{n+1} = -inf)
    log_a = torch.cat([-inf, torch.logcumsumexp(-z, dim=-1)], dim=-1)  # A_j = sum_{i <= j} exp(-z_i)
    log_b = torch.cat([tail, -inf], dim=-1)  # B_j = sum_{i > j} exp(z_i)
    d = torch.arange(0, n + 1, dtype=x.dtype, device=x.device) - k
    log_d = torch.log(d.abs())
    root = 0.5 * torch.logaddexp(2.0 * log_d, log_a + log_b)  # log sqrt(d^2 + A B)
    log_u = torch.where(
        d >= 0,
        torch.logaddexp(log_d, root) - log_a,  # (d + sqrt(d^2 + AB)) / A
        log_b - torch.logaddexp(root, log_d),  # B / (sqrt(d^2 + AB) + |d|), the same root
    )
    t = alpha * log_u
    valid = (t <= torch.cat([inf, s], dim=-1)) & (t >= torch.cat([s, -inf], dim=-1))
    j = torch.argmax(valid.to(torch.int8), dim=-1, keepdim=True)
    threshold = torch.gather(t, -1, j)
    w = (x - threshold) / alpha
    return torch.where(w >= 0, 1.0 - 0.5 * torch.exp(-w.clamp(min=0)), 0.5 * torch.exp(w.clamp(max=0)))
