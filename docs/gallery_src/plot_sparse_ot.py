"""
A sparse OT plan: at most k nonzeros per column
===============================================

``softk.sparse_ot(cost, k=k, gamma=...)`` solves quadratically regularised OT
with at most ``k`` nonzeros in each column of the plan (Liu, Puigcerver and
Blondel 2023). Beside it, the entropic plan of ``softk.sinkhorn`` on the same
problem is dense: every entry is positive. ``k = 1`` gives a (near) assignment;
larger ``k`` lets each target split its mass over a few sources.
"""

import os
import warnings

import matplotlib.pyplot as plt
import numpy as np

import softk

n = 12 if os.environ.get("SOFTK_GALLERY_SMALL") else 30  # small when the test suite builds the gallery
rng = np.random.default_rng(0)
x, y = rng.uniform(size=(n, 2)), rng.uniform(size=(n, 2))
cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
cost /= cost.max()

dense = np.asarray(softk.sinkhorn(cost, epsilon=1e-2).plan)
panels = [("entropic (sinkhorn, eps 1e-2)", dense)]
for k in (1, 2):
    with warnings.catch_warnings():
        # where the cardinality bound binds, the dual's maximiser misses the marginals: softk
        # says so (MarginalGapWarning) and reports the gap in ``error``
        warnings.simplefilter("ignore")
        out = softk.sparse_ot(cost, k=k, gamma=1e-2)
    plan = np.asarray(out.plan)
    panels.append((f"sparse, k = {k}: error {float(out.error):.1e}", plan))
    print(f"k = {k}: max nonzeros per column {int((plan > 0).sum(0).max())}, marginal error {float(out.error):.2e}")

fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
for ax, (title, plan) in zip(axes, panels):
    ax.imshow(plan * n, cmap="magma_r", vmin=0, vmax=1)
    ax.set(title=title, xlabel="target j", ylabel="source i", xticks=[], yticks=[])
print("nonzeros in the entropic plan:", int((dense > 0).sum()), "of", n * n)
fig.tight_layout()
