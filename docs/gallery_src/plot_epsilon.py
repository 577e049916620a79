"""
What epsilon is relative to
===========================

Every softk operator takes an ``epsilon``, but not on the same scale (see
:doc:`/epsilon`):

* ``soft_topk``, ``soft_topk_sorted`` (and ``beam_search``, which uses it):
  relative to the squared distance to two anchors at 0 and 1, divided by its
  maximum. The sharpness in score units then depends on the scale of the
  scores, and is greatest when they are of order one.
* ``soft_sort``, ``soft_rank``, ``soft_quantile``: absolute, on scores that
  are first standardised and squashed to [0, 1]: shifting or scaling the
  scores changes nothing.
* ``sinkhorn`` and ``sinkhorn_divergence``: in the units of the cost
  (squared distances): scaling the clouds by ``s`` needs ``epsilon * s**2``
  for the same plan.
"""

import matplotlib.pyplot as plt
import numpy as np

import softk

rng = np.random.default_rng(0)
x = rng.normal(size=50)
k, eps = 5, 0.01
hard = np.zeros_like(x)
hard[np.argsort(-x)[:k]] = 1.0
ranks = np.argsort(np.argsort(x)) + 1.0

scales = np.logspace(-2, 2, 17)
topk_dev = [np.abs(softk.soft_topk(s * x, k, epsilon=eps) - hard).max() for s in scales]
rank_dev = [np.abs(softk.soft_rank(s * x, epsilon=eps) - ranks).max() / len(x) for s in scales]
shift_dev = [np.abs(softk.soft_topk(x + c, k, epsilon=eps) - hard).max() for c in scales]

fig, ax = plt.subplots(figsize=(7, 4.2))
ax.loglog(scales, topk_dev, "o-", label="soft_topk(s * x): max |A - hard mask|")
ax.loglog(scales, shift_dev, "s-", label="soft_topk(x + s): max |A - hard mask|")
ax.loglog(scales, rank_dev, "^-", label="soft_rank(s * x): max |r - ranks| / n")
ax.set(xlabel="s", ylabel="deviation from the hard result", title=f"standard normal scores, n = 50, epsilon = {eps:g}")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Sinkhorn: epsilon in cost units
# -------------------------------
# The number of target points a source point effectively spreads over,
# ``exp(entropy)`` of its row of the plan, grows with ``epsilon``. For
# clouds scaled by ``s`` the curves differ by ``s**2`` in ``epsilon``, and
# coincide once ``epsilon`` is divided by the squared scale (or by a
# typical cost, such as the mean squared distance).

n = 60
base_x, base_y = rng.uniform(size=(n, 2)), rng.uniform(size=(n, 2))
relative = np.logspace(-3, 1, 9)  # epsilon / scale**2
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for s in (1.0, 10.0):
    spread = []
    for e in relative * s**2:
        plan = np.asarray(softk.sinkhorn(x=s * base_x, y=s * base_y, epsilon=e).plan) * n
        spread.append(np.exp(-(plan * np.log(np.where(plan > 0, plan, 1.0))).sum(1)).mean())
    axes[0].loglog(relative * s**2, spread, "o-", label=f"clouds scaled by {s:g}")
    axes[1].loglog(relative, spread, "o-", label=f"clouds scaled by {s:g}")
axes[0].set(xlabel="epsilon", ylabel="targets per source point, exp(entropy)")
axes[1].set(xlabel="epsilon / scale**2")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
