"""
Soft sort, soft ranks and soft quantiles
========================================

``softk.soft_sort`` and ``softk.soft_rank`` transport the scores to ``m``
increasing targets in [0, 1] (Cuturi, Teboul and Vert, 2019). The scores are
first squashed to [0, 1] by a sigmoid of their standardised values, so
``epsilon`` is absolute and the same for any shift or scale of the scores.
As ``epsilon`` shrinks, the soft sort tends to ``np.sort`` and the soft ranks
to the integer ranks 1..n.
"""

import matplotlib.pyplot as plt
import numpy as np

import softk

rng = np.random.default_rng(0)
n = 12
x = rng.normal(size=n)
epsilons = (1e-1, 1e-2, 1e-3, 1e-4)

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(np.arange(1, n + 1), np.sort(x), "k-", lw=2, label="np.sort")
axes[1].plot(np.arange(1, n + 1), np.arange(1, n + 1), "k-", lw=2, label="hard ranks")
order = np.argsort(x)
for eps in epsilons:
    axes[0].plot(np.arange(1, n + 1), softk.soft_sort(x, epsilon=eps), "o-", ms=3, label=f"epsilon = {eps:g}")
    axes[1].plot(np.arange(1, n + 1), softk.soft_rank(x, epsilon=eps)[order], "o-", ms=3, label=f"epsilon = {eps:g}")
axes[0].set(title="soft sort", xlabel="position", ylabel="value")
axes[1].set(title="soft ranks (entries in increasing order)", xlabel="hard rank", ylabel="soft rank")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Fewer targets and quantiles
# ---------------------------
# With ``m < n`` targets each output of ``soft_sort`` is the mean of a block of
# ``n / m`` consecutive sorted values, and ``soft_quantile`` reads one
# quantile off a target of small mass. Both are smooth in ``x``: here the
# soft median of a sample moves continuously as one score crosses the others,
# where the hard median jumps.

x = rng.normal(size=101)
shifts = np.linspace(-3, 3, 61)
fig, ax = plt.subplots(figsize=(6, 4))
for eps in (1e-1, 1e-2, 1e-3):
    med = [softk.soft_quantile(np.r_[x[:-1], s], 0.5, epsilon=eps) for s in shifts]
    ax.plot(shifts, med, label=f"soft median, epsilon = {eps:g}")
ax.plot(shifts, [np.median(np.r_[x[:-1], s]) for s in shifts], "k--", label="np.median")
ax.set(xlabel="value of the last score", ylabel="median of the 101 scores")
ax.legend(fontsize=8)
fig.tight_layout()
print("soft sort with m = 4 targets:", softk.soft_sort(np.arange(8.0), epsilon=1e-4, m=4).round(3))
