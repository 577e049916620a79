"""
Soft top-p (nucleus) selection
==============================

``soft_topp(logits, p, epsilon=...)`` is the mask of nucleus sampling made
smooth: ``A_i = sigmoid((z_i - t) / epsilon)`` with the threshold ``t`` set
so that the selected probability mass ``sum_i softmax(z)_i A_i`` is exactly
``p``. ``epsilon`` is a temperature in the units of the logits. As it goes
to zero the mask becomes the fractional nucleus: 1 on the most probable
tokens, a fraction on the boundary token, 0 after; ``straight_through=True``
forwards the hard nucleus mask and backpropagates the soft one.
"""

import matplotlib.pyplot as plt
import numpy as np

from softk.topp import soft_topp  # softk.soft_topp

rng = np.random.default_rng(0)
logits = np.sort(rng.normal(scale=1.5, size=30))[::-1]
probs = np.exp(logits) / np.exp(logits).sum()
p = 0.8

fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
axes[0].bar(np.arange(30), probs, color=np.where(np.cumsum(probs) - probs < p, "tab:red", "tab:gray"))
axes[0].set(title=f"token probabilities (hard nucleus, p = {p}, in red)", xlabel="token (most probable first)")
axes[1].step(np.arange(30), soft_topp(logits, p, straight_through=True), where="mid", color="black", lw=2,
             label="hard nucleus")
for eps in (1.0, 0.3, 0.1, 0.01):
    a = soft_topp(logits, p, epsilon=eps)
    axes[1].plot(np.arange(30), a, "o-", ms=3, label=f"epsilon = {eps:g}: mass {float((probs * a).sum()):.3f}")
axes[1].set(title="soft top-p mask", xlabel="token (most probable first)", ylim=(-0.05, 1.05))
axes[1].legend(fontsize=8)
fig.tight_layout()
