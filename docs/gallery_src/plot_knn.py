"""
Differentiable k-nearest neighbours
===================================

The SOFT paper's kNN classifier: for a batch of queries and a support set,
the squared distances between embeddings go through
``softk.soft_topk(d, k, largest=False)``, the soft indicator of each query's
``k`` nearest neighbours. The class scores ``A @ onehot(labels) / k`` are
differentiable, so a network can learn an embedding in which kNN classifies
well. Here a small PyTorch network maps scikit-learn's 8x8 digits to two
dimensions (to draw them); evaluation uses the ordinary, hard kNN.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import softk

small = bool(os.environ.get("SOFTK_GALLERY_SMALL"))  # small when the test suite builds the gallery
steps = 60 if small else 400
k, epsilon = 5, 0.05
torch.manual_seed(0)

data = load_digits()
x_tr, x_te, y_tr, y_te = train_test_split(
    (data.data / 16.0).astype(np.float32), data.target, test_size=0.3, random_state=0, stratify=data.target
)
X, Y, X_te = torch.asarray(x_tr), torch.asarray(y_tr), torch.asarray(x_te)
onehot = torch.nn.functional.one_hot(Y, 10).float()
net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
opt = torch.optim.Adam(net.parameters(), lr=3e-3)


def hard_knn_accuracy() -> float:
    with torch.no_grad():
        d = torch.cdist(net(X_te), net(X)) ** 2
        votes = onehot[d.topk(k, largest=False).indices].sum(1)
    return float((votes.argmax(1).numpy() == y_te).mean())


def embedding() -> np.ndarray:
    with torch.no_grad():
        return net(X_te).numpy()


before, accuracy = embedding(), [(0, hard_knn_accuracy())]
rng = np.random.default_rng(0)
for step in range(1, steps + 1):
    idx = torch.asarray(rng.permutation(len(X))[:500])
    q, s = idx[:100], idx[100:]
    d = ((net(X[q])[:, None, :] - net(X[s])[None, :, :]) ** 2).sum(-1)
    a = softk.soft_topk(d, k, epsilon=epsilon, largest=False)  # (100 queries, 400 support), rows sum to k
    probs = a @ onehot[s] / k
    loss = -torch.log(probs[torch.arange(len(q)), Y[q]] + 1e-6).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % (steps // 6) == 0:
        accuracy.append((step, hard_knn_accuracy()))

fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
for ax, emb, title in ((axes[0], before, "untrained embedding"), (axes[1], embedding(), f"after {steps} steps")):
    points = ax.scatter(*emb.T, c=y_te, cmap="tab10", s=6)
    ax.set(title=f"{title} (test digits)", xticks=[], yticks=[])
fig.colorbar(points, ax=axes[1], ticks=range(10))
axes[2].plot(*zip(*accuracy), "o-")
axes[2].set(title=f"hard {k}-NN test accuracy", xlabel="training step", ylim=(0, 1))
fig.tight_layout()
print(f"hard {k}-NN test accuracy in the learned 2-D embedding: {accuracy[0][1]:.3f} -> {accuracy[-1][1]:.3f}")
