"""Training logits for nucleus (top-p) sampling with the soft top-p mask.

A model's next-token logits ``z = z0 + delta`` are decoded by nucleus
sampling: keep the most probable tokens until their mass reaches ``P``, sample
from the renormalised rest. Each token has a reward ``r`` (say, a quality
score); we fine-tune ``delta`` to maximise the expected reward *under nucleus
sampling*, with a KL penalty that keeps the model near its prior ``z0``:

    loss = -E_{w ~ nucleus(z)}[r_w] + BETA * KL(softmax(z) || softmax(z0)).

The hard nucleus has no useful gradient (its membership is piecewise constant).
Three ways to train, same Adam steps:

* ``full softmax``: ignore the truncation, maximise ``E_{w ~ softmax(z)}[r_w]``;
* ``soft top-p``: the nucleus distribution ``softmax(z) * A / P`` with
  ``A = softk.soft_topp(z, P, epsilon=EPS)`` (exactly mass ``P``);
* ``straight-through``: the hard nucleus in the forward pass, the soft mask's
  gradient in the backward pass.

Each is scored by the exact expected reward of real nucleus sampling (the
hard mask, renormalised), checked by sampling. The nucleus-aware losses learn
which tokens make it into the nucleus; the full-softmax loss wastes its KL
budget on probability mass that nucleus sampling throws away.

Run: ``python examples/nucleus.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import torch

from softk.topp import soft_topp

VOCAB, P, EPS, BETA, STEPS, LR = 40, 0.8, 0.3, 0.3, 200, 0.05
METHODS = ("full softmax", "soft top-p", "straight-through")


def problem(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior logits (a peaked, Zipf-like model) and per-token rewards, uncorrelated with the prior."""
    gen = torch.Generator().manual_seed(seed)
    z0 = -1.2 * torch.log(torch.arange(1.0, VOCAB + 1, dtype=torch.float64)) + 0.3 * torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    reward = torch.rand(VOCAB, generator=gen, dtype=torch.float64)
    return z0, reward


def nucleus_reward(z: torch.Tensor, reward: torch.Tensor) -> float:
    """The exact expected reward of nucleus sampling at mass ``P`` (the hard mask, renormalised)."""
    mask = soft_topp(z, P, straight_through=True)
    q = torch.softmax(z, -1) * mask
    return float((q * reward).sum() / q.sum())


def sampled_reward(z: torch.Tensor, reward: torch.Tensor, n: int, seed: int) -> float:
    """Monte Carlo check of :func:`nucleus_reward`: sample tokens from the renormalised nucleus."""
    q = torch.softmax(z, -1) * soft_topp(z, P, straight_through=True)
    draws = torch.multinomial(q / q.sum(), n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return float(reward[draws].mean())


def objective(z: torch.Tensor, reward: torch.Tensor, method: str) -> torch.Tensor:
    """The expected reward the method trains on."""
    pi = torch.softmax(z, -1)
    if method == "full softmax":
        return (pi * reward).sum()
    mask = soft_topp(z, P, epsilon=EPS, straight_through=method == "straight-through")
    q = pi * mask
    return (q * reward).sum() / q.sum()


def train(method: str, seed: int = 0, steps: int = STEPS) -> tuple[float, torch.Tensor]:
    """Fine-tune ``delta``; return the nucleus reward reached and the final logits."""
    z0, reward = problem(seed)
    delta = torch.zeros(VOCAB, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=LR)
    log_prior = torch.log_softmax(z0, -1)
    for _ in range(steps):
        z = z0 + delta
        kl = (torch.softmax(z, -1) * (torch.log_softmax(z, -1) - log_prior)).sum()
        loss = -objective(z, reward, method) + BETA * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = (z0 + delta).detach()
    return nucleus_reward(z, reward), z


def main(seeds: tuple[int, ...] = (0, 1, 2), steps: int = STEPS) -> dict[str, list[float]]:
    results = {m: [] for m in ("prior", *METHODS)}
    for seed in seeds:
        z0, reward = problem(seed)
        results["prior"].append(nucleus_reward(z0, reward))
        for method in METHODS:
            results[method].append(train(method, seed, steps)[0])
    return results


if __name__ == "__main__":
    torch.manual_seed(0)
    res = main()
    print(f"expected reward of nucleus sampling (p = {P}), {STEPS} Adam steps, seeds 0-2")
    print(f"{'method':<18} " + " ".join(f"seed {s:<5}" for s in range(3)) + "  mean")
    for name, values in res.items():
        print(f"{name:<18} " + " ".join(f"{v:<10.4f}" for v in values) + f"  {sum(values) / len(values):.4f}")
    _, z = train("soft top-p", 0)
    print(f"sampling check (seed 0, soft top-p): exact {nucleus_reward(z, problem(0)[1]):.4f}, "
          f"100k samples {sampled_reward(z, problem(0)[1], 100_000, 0):.4f}")
