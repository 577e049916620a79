"""
A Sinkhorn-divergence flow
==========================

``softk.sinkhorn_divergence(x, y, epsilon=...)`` is the debiased entropic OT
cost ``S(x, y) = W(x, y) - (W(x, x) + W(y, y)) / 2``: non-negative, zero when
the two clouds coincide, and differentiable with the framework's autograd.
Gradient descent on the points of ``x`` moves the cloud onto ``y``. The
gradient with respect to one point is about ``2 (x_i - T(x_i)) / n``, with
``T(x_i)`` where the plan sends it, so a step of ``-lr * n * grad`` moves each
point a fraction ``2 lr`` of the way there.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import softk

torch.manual_seed(0)
small = bool(os.environ.get("SOFTK_GALLERY_SMALL"))  # small when the test suite builds the gallery
n, steps = (100, 30) if small else (300, 60)
epsilon, lr = 1e-2, 0.05

rng = np.random.default_rng(0)
y = torch.asarray(np.c_[rng.normal(0.7, 0.08, n), rng.normal(0.3, 0.05, n)])
t = rng.uniform(0, 2 * np.pi, n)
x = torch.asarray(np.c_[0.3 + 0.15 * np.cos(t), 0.7 + 0.15 * np.sin(t)] + 0.01 * rng.normal(size=(n, 2)))
x.requires_grad_(True)

snapshots, losses = {0: x.detach().clone()}, []
for step in range(1, steps + 1):
    loss = softk.sinkhorn_divergence(x, y, epsilon=epsilon)
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        x -= lr * n * grad
    losses.append(float(loss.detach()))
    if step in (steps // 6, steps // 2, steps):
        snapshots[step] = x.detach().clone()

fig, axes = plt.subplots(1, len(snapshots) + 1, figsize=(15, 3.6))
for ax, (step, pts) in zip(axes, snapshots.items()):
    ax.scatter(*y.numpy().T, s=6, c="tab:blue", label="target y")
    ax.scatter(*pts.numpy().T, s=6, c="tab:red", label="moving x")
    ax.set(title=f"step {step}", xlim=(0, 1), ylim=(0, 1), aspect="equal", xticks=[], yticks=[])
axes[0].legend(loc="lower left", fontsize=7)
axes[-1].semilogy(np.arange(1, steps + 1), losses)
axes[-1].set(title="S(x, y)", xlabel="step")
fig.tight_layout()
print(f"S(x, y): {losses[0]:.4f} at the start, {losses[-1]:.2e} after {steps} steps")
