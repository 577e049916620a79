"""The demo's picture: the soft top-k indicator for several epsilons beside the hard mask."""

from __future__ import annotations

import numpy as np

import softk


def plot_indicators(path: str, n: int = 30, k: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.random.default_rng(1).normal(size=n)
    order = np.argsort(-x)
    hard = np.zeros(n)
    hard[order[:k]] = 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].bar(np.arange(n), x[order], color=np.where(hard[order] > 0, "tab:red", "tab:gray"))
    axes[0].set(title=f"scores, sorted (top {k} in red)", xlabel="rank")
    axes[1].step(np.arange(n), hard[order], where="mid", color="black", lw=2, label="hard top-k")
    for eps, colour in zip((1.0, 0.1, 0.01, 1e-3), ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
        axes[1].plot(np.arange(n), softk.soft_topk(x, k, epsilon=eps)[order], "o-", ms=3, color=colour, label=f"epsilon = {eps:g}")
    axes[1].set(title="soft top-k indicator A (sums to k)", xlabel="rank", ylim=(-0.05, 1.05))
    axes[1].legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
