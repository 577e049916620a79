"""The demo's figures: each operator against epsilon, beside its hard counterpart."""

from __future__ import annotations

import pathlib

import numpy as np

import softk

from .cases import LOG_PROBS

EPSILONS = (1.0, 0.1, 0.01, 1e-3)


def _soft_topk(plt, n: int = 30, k: int = 8):
    x = np.random.default_rng(1).normal(size=n)
    order = np.argsort(-x)
    hard = np.zeros(n)
    hard[order[:k]] = 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].bar(np.arange(n), x[order], color=np.where(hard[order] > 0, "tab:red", "tab:gray"))
    axes[0].set(title=f"scores, sorted (top {k} in red)", xlabel="rank")
    axes[1].step(np.arange(n), hard[order], where="mid", color="black", lw=2, label="hard top-k")
    for eps in EPSILONS:
        axes[1].plot(np.arange(n), softk.soft_topk(x, k, epsilon=eps)[order], "o-", ms=3, label=f"epsilon = {eps:g}")
    axes[1].set(title="soft_topk: indicator A (sums to k)", xlabel="rank", ylim=(-0.05, 1.05))
    axes[1].legend(loc="center right")
    return fig


def _sorting(plt, n: int = 12):
    x = np.random.default_rng(0).normal(size=n)
    ranks = np.arange(1, n + 1)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(ranks, np.sort(x), "k-", lw=2, label="np.sort")
    axes[1].plot(ranks, ranks, "k-", lw=2, label="hard ranks")
    a = softk.soft_topk_sorted(x, 3, epsilon=0.05)
    axes[2].imshow(a[np.argsort(-x)].T, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    for eps in (0.1, 0.01, 1e-3):
        axes[0].plot(ranks, softk.soft_sort(x, epsilon=eps), "o-", ms=3, label=f"epsilon = {eps:g}")
        axes[1].plot(ranks, softk.soft_rank(x, epsilon=eps)[np.argsort(x)], "o-", ms=3, label=f"epsilon = {eps:g}")
    axes[0].set(title="soft_sort", xlabel="position")
    axes[1].set(title="soft_rank (entries in increasing order)", xlabel="hard rank")
    axes[2].set(title="soft_topk_sorted, k = 3, epsilon = 0.05", xlabel="entry (largest first)", ylabel="rank - 1")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    return fig


def _ot_plans(plt, n: int = 30):
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2 * np.pi, n)
    x = np.c_[0.5 + 0.3 * np.cos(t), 0.5 + 0.3 * np.sin(t)]
    y = rng.uniform(0.2, 0.8, size=(n, 2))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, eps in zip(axes, (0.1, 0.01, 1e-3)):
        out = softk.sinkhorn(x=x, y=y, epsilon=eps)
        plan = np.asarray(out.plan) * n
        for i, j in zip(*np.nonzero(plan > 0.2)):
            ax.plot([x[i, 0], y[j, 0]], [x[i, 1], y[j, 1]], "k-", alpha=min(1.0, plan[i, j]), lw=0.8)
        ax.scatter(*x.T, s=12, c="tab:red")
        ax.scatter(*y.T, s=12, c="tab:blue")
        ax.set(title=f"sinkhorn plan, epsilon = {eps:g}\ncost {float(out.cost):.4f}", aspect="equal", xticks=[], yticks=[])
    return fig


def _beam_search(plt):
    start = LOG_PROBS[:1]

    def step(tokens, state):
        lp = state if tokens is None else tokens @ LOG_PROBS
        return lp, lp

    hard = softk.beam_search(step, start, 2, 3, hard=True).scores[0]
    epsilons = np.logspace(-3, 0, 10)
    soft = np.array([softk.beam_search(step, start, 2, 3, epsilon=e).scores[0] for e in epsilons])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in range(2):
        ax.semilogx(epsilons, soft[:, r], "o-", ms=3, label=f"beam {r + 1}, soft")
        ax.axhline(hard[r], color=f"C{r}", ls=":", label=f"beam {r + 1}, hard")
    ax.set(title="beam_search: beam scores against epsilon", xlabel="epsilon", ylabel="log-probability")
    ax.legend(fontsize=8)
    return fig


FIGURES = {"soft_topk.png": _soft_topk, "sorting.png": _sorting, "ot_plans.png": _ot_plans,
           "beam_search.png": _beam_search}


def write_figures(folder: pathlib.Path) -> list[pathlib.Path]:
    """Write every figure to ``folder`` (created if needed); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in FIGURES.items():
        fig = draw(plt)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        paths.append(folder / name)
    return paths
