"""
Soft top-k and the hard mask
============================

``softk.soft_topk(x, k, epsilon=...)`` returns values in [0, 1] that sum to
``k`` and tend to the hard top-k mask as ``epsilon`` goes to zero. Here the
indicator of the 8 largest of 30 scores, for four values of ``epsilon``,
beside the hard mask; then the distance to the mask as a function of
``epsilon``: linear in ``epsilon`` once it is small against the gap between
the k-th and (k+1)-th scores.
"""

import matplotlib.pyplot as plt
import numpy as np

import softk

rng = np.random.default_rng(1)
n, k = 30, 8
x = rng.normal(size=n)
order = np.argsort(-x)
hard = np.zeros(n)
hard[order[:k]] = 1.0

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
axes[0].bar(np.arange(n), x[order], color=np.where(hard[order] > 0, "tab:red", "tab:gray"))
axes[0].set(title=f"scores, sorted (top {k} in red)", xlabel="rank")
axes[1].step(np.arange(n), hard[order], where="mid", color="black", lw=2, label="hard top-k")
for eps in (1.0, 0.1, 0.01, 1e-3):
    a = softk.soft_topk(x, k, epsilon=eps)
    axes[1].plot(np.arange(n), a[order], "o-", ms=3, label=f"epsilon = {eps:g} (sum {a.sum():.3f})")
axes[1].set(title="soft top-k indicator", xlabel="rank", ylim=(-0.05, 1.05))
axes[1].legend(loc="center right")
fig.tight_layout()

# %%
# The distance to the hard mask
# -----------------------------
# The largest deviation from the mask shrinks linearly with ``epsilon`` below
# a scale set by the gap between the k-th and (k+1)-th scores (relative to
# the normalised cost: see :doc:`/epsilon`). ``largest=False`` selects the
# smallest scores instead: it is the same function of ``-x``.

epsilons = np.logspace(-4, 0, 17)
gap = x[order[k - 1]] - x[order[k]]
errors = [np.abs(softk.soft_topk(x, k, epsilon=e) - hard).max() for e in epsilons]
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(epsilons, errors, "o-", label="max |A - hard mask|")
ax.loglog(epsilons, epsilons / epsilons[0] * errors[0], "k:", label="slope 1")
ax.set(xlabel="epsilon", ylabel="deviation", title=f"gap between k-th and (k+1)-th score: {gap:.3f}")
ax.legend()
fig.tight_layout()
print("smallest scores selected by largest=False:", np.round(softk.soft_topk(x, 3, epsilon=1e-3, largest=False)).nonzero()[0])
