"""
Differentiable beam search
==========================

``softk.beam_search(step, state, k, length, epsilon=...)`` runs beam search
whose top-k selection at each step is the sorted soft top-k
(``softk.soft_topk_sorted``), so the beams' scores, tokens and states are
smooth functions of the model's log-probabilities. As ``epsilon`` goes to zero
it becomes ordinary beam search (``hard=True``).

The model here is a fixed bigram table over 5 tokens; the "state" is the
log-probabilities of the next token.
"""

import matplotlib.pyplot as plt
import numpy as np

import softk

rng = np.random.default_rng(3)
V, k, length = 5, 3, 4
logits = rng.normal(scale=1.5, size=(V, V))
logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
start = np.log(np.full((1, V), 1.0 / V))  # a batch of one sequence


def step(tokens, state):
    lp = state if tokens is None else tokens @ logp  # soft one-hot tokens select rows of the table
    return lp, lp


hard = softk.beam_search(step, start, k, length, hard=True)
print("hard beams:", hard.tokens.argmax(-1)[0].tolist(), "scores", hard.scores[0].round(3).tolist())

epsilons = np.logspace(-4, 0, 13)
scores = np.array([softk.beam_search(step, start, k, length, epsilon=e).scores[0] for e in epsilons])

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for r in range(k):
    axes[0].semilogx(epsilons, scores[:, r], "o-", ms=3, label=f"beam {r + 1} (soft)")
    axes[0].axhline(hard.scores[0, r], color=f"C{r}", ls=":", lw=1)
axes[0].set(xlabel="epsilon", ylabel="sequence log-probability", title="beam scores; dotted: hard beam search")
axes[0].legend(fontsize=8)

soft = softk.beam_search(step, start, k, length, epsilon=0.1)
axes[1].imshow(soft.tokens[0].reshape(k * length, V), cmap="Greys", vmin=0, vmax=1, aspect="auto")
axes[1].set_yticks(range(k * length), [f"beam {r + 1}, t={t + 1}" for r in range(k) for t in range(length)], fontsize=7)
axes[1].set(xlabel="token", title="soft tokens at epsilon = 0.1 (rows sum to 1)")
fig.tight_layout()

# %%
# Gradients with respect to the model
# -----------------------------------
# The best beam's score is differentiable in the bigram table, here with
# PyTorch's autograd (JAX works the same way; ``softk.vjp`` is the NumPy route
# for single operators). With ``hard=True`` the gradient counts the
# transitions that the best sequence uses; the soft search spreads it over
# the transitions of the competing beams too.

import torch  # noqa: E402

table = torch.asarray(logp).requires_grad_(True)


def model(tokens, state):
    lp = state if tokens is None else tokens @ table
    return lp, lp


fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
for ax, kw in zip(axes, (dict(hard=True), dict(epsilon=0.1))):
    (grad,) = torch.autograd.grad(softk.beam_search(model, torch.asarray(start), k, length, **kw).scores[0, 0], table)
    im = ax.imshow(grad.numpy(), cmap="RdBu_r", vmin=-3, vmax=3)
    ax.set(title=f"d(best score) / d(log p), {'hard' if kw.get('hard') else 'epsilon = 0.1'}",
           xlabel="next token", ylabel="previous token")
    print(kw, "gradient:\n", grad.numpy().round(2))
fig.colorbar(im, ax=axes)
