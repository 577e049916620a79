"""
An entropic OT plan between two point clouds
============================================

``softk.sinkhorn(x=x, y=y, epsilon=...)`` solves entropic optimal transport
between two weighted clouds with the squared Euclidean cost. Its ``plan``
``P`` has the two weight vectors as marginals; ``epsilon`` is in cost units
(here squared distances in the unit square), and the plan spreads each
point's mass over a neighbourhood of radius about ``sqrt(epsilon)``.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

import softk

n = 40 if os.environ.get("SOFTK_GALLERY_SMALL") else 120  # small when the test suite builds the gallery
rng = np.random.default_rng(0)
theta = rng.uniform(0, 2 * np.pi, n)
x = np.c_[0.3 * np.cos(theta), 0.3 * np.sin(theta)] + 0.5 + 0.02 * rng.normal(size=(n, 2))
y = rng.uniform(0.2, 0.8, size=(n, 2))

epsilons = (1e-1, 1e-2, 1e-3)
fig, axes = plt.subplots(2, len(epsilons), figsize=(12, 7.5))
for col, eps in enumerate(epsilons):
    out = softk.sinkhorn(x=x, y=y, epsilon=eps)
    plan = np.asarray(out.plan)
    ax = axes[0, col]
    for i, j in zip(*np.nonzero(plan > 0.2 / n)):
        ax.plot([x[i, 0], y[j, 0]], [x[i, 1], y[j, 1]], "k-", alpha=min(1.0, plan[i, j] * n), lw=0.8)
    ax.scatter(*x.T, s=12, c="tab:red", label="x (source)")
    ax.scatter(*y.T, s=12, c="tab:blue", label="y (target)")
    ax.set(title=f"epsilon = {eps:g}: cost {float(out.cost):.4f}", aspect="equal", xticks=[], yticks=[])
    order_x, order_y = np.argsort(theta), np.argsort(np.arctan2(y[:, 1] - 0.5, y[:, 0] - 0.5))
    axes[1, col].imshow(plan[np.ix_(order_x, order_y)] * n, cmap="magma_r", vmin=0, vmax=1)
    axes[1, col].set(title="n P (rows: x by angle, columns: y by angle)", xticks=[], yticks=[])
    print(f"epsilon {eps:g}: converged {bool(out.converged)}, row-marginal error {float(out.error):.1e}")
axes[0, 0].legend(loc="lower left", fontsize=8)
fig.tight_layout()

# %%
# The same plan on any backend
# ----------------------------
# The inputs may be NumPy, PyTorch, JAX or CuPy arrays; the plan comes back in
# the same library, and ``out.cost`` is differentiable with respect to ``x``,
# ``y`` and the weights. ``softk.vjp`` gives the pullback with NumPy:
# the gradient of the regularised cost with respect to the cost matrix is ``P``.

cost_matrix = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
value, pullback = softk.vjp(softk.sinkhorn_cost, cost_matrix, epsilon=1e-2)
(grad_cost,) = pullback(np.ones(()))
plan = np.asarray(softk.sinkhorn(cost_matrix, epsilon=1e-2).plan)
print("max |dW/dC - P| =", float(np.abs(grad_cost - plan).max()))
