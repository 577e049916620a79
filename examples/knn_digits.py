"""Differentiable kNN (SOFT paper, section 4): learn an embedding through the soft top-k.

For a batch of queries and a support set drawn from the training data, the
squared distances between embeddings go through ``softk.soft_topk(d, k,
largest=False)``: the soft indicator of each query's k nearest neighbours. Class
scores are ``A @ onehot(labels) / k`` and the loss is their cross-entropy, so
the network learns a metric in which kNN classifies well. Evaluation uses the
*hard* kNN on the learned embedding.

Run ``python examples/knn_digits.py`` (scikit-learn's bundled digits; no download)
for the table over seeds: soft-kNN embedding (PyTorch and JAX), plain kNN on
pixels, and a cross-entropy network of the same size.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import softk

K, EPSILON, EMBED, HIDDEN = 5, 0.05, 32, 128


def load_digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.3, random_state=seed, stratify=data.target)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    return (x_tr - mean) / std, (x_te - mean) / std, y_tr, y_te


def hard_knn_accuracy(emb_train: np.ndarray, y_train: np.ndarray, emb_test: np.ndarray, y_test: np.ndarray, k: int = K) -> float:
    d = ((emb_test[:, None, :] - emb_train[None, :, :]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1)[:, :k]
    votes = np.stack([np.bincount(row, minlength=10) for row in y_train[nearest]])
    return float((votes.argmax(1) == y_test).mean())


def _episodes(rng: np.random.Generator, n_train: int, steps: int, queries: int, support: int):
    for _ in range(steps):
        idx = rng.permutation(n_train)[: queries + support]
        yield idx[:queries], idx[queries:]


def train_torch(seed: int, steps: int = 300, soft: bool = True, queries: int = 100, support: int = 400) -> float:
    """Test accuracy of hard kNN on an embedding trained through soft_topk (or, with
    ``soft=False``, the accuracy of the same network trained with cross-entropy)."""
    import torch

    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = load_digits_split(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, EMBED))
    head = torch.nn.Linear(EMBED, 10)
    params = list(net.parameters()) + ([] if soft else list(head.parameters()))
    opt = torch.optim.Adam(params, lr=1e-3)
    X, Y = torch.asarray(x_tr), torch.asarray(y_tr)
    onehot = torch.nn.functional.one_hot(Y, 10).float()
    for q, s in _episodes(np.random.default_rng(seed), len(x_tr), steps, queries, support):
        q, s = torch.asarray(q), torch.asarray(s)
        if soft:
            eq, es = net(X[q]), net(X[s])
            d = ((eq[:, None, :] - es[None, :, :]) ** 2).sum(-1)
            a = softk.soft_topk(d, K, epsilon=EPSILON, largest=False)
            probs = a @ onehot[s] / K
            loss = -torch.log(probs[torch.arange(len(q)), Y[q]] + 1e-6).mean()
        else:
            loss = torch.nn.functional.cross_entropy(head(net(X[q])), Y[q])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        if not soft:
            return float((head(net(torch.asarray(x_te))).argmax(1).numpy() == y_te).mean())
        return hard_knn_accuracy(net(X).numpy(), y_tr, net(torch.asarray(x_te)).numpy(), y_te)


def train_jax(seed: int, steps: int = 300, queries: int = 100, support: int = 400) -> float:
    """The soft-kNN embedding in JAX: hand-written MLP and Adam, the step under ``jax.jit``."""
    import jax
    import jax.numpy as jnp

    x_tr, x_te, y_tr, y_te = load_digits_split(seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    params = [
        (jax.random.normal(keys[0], (64, HIDDEN), jnp.float32) / 8.0, jnp.zeros(HIDDEN, jnp.float32)),
        (jax.random.normal(keys[1], (HIDDEN, EMBED), jnp.float32) / HIDDEN**0.5, jnp.zeros(EMBED, jnp.float32)),
    ]

    def embed(p, x):
        (w1, b1), (w2, b2) = p
        return jax.nn.relu(x @ w1 + b1) @ w2 + b2

    X, onehot = jnp.asarray(x_tr), jax.nn.one_hot(jnp.asarray(y_tr), 10)

    def loss_fn(p, q, s):
        eq, es = embed(p, X[q]), embed(p, X[s])
        d = jnp.sum((eq[:, None, :] - es[None, :, :]) ** 2, axis=-1)
        a = softk.soft_topk(d, K, epsilon=EPSILON, largest=False)
        probs = a @ onehot[s] / K
        return -jnp.mean(jnp.log(jnp.sum(probs * onehot[q], axis=1) + 1e-6))

    @jax.jit
    def step(p, m, v, t, q, s):
        g = jax.grad(loss_fn)(p, q, s)
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        lr = 1e-3 * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = jax.tree_util.tree_map(lambda p, m, v: p - lr * m / (jnp.sqrt(v) + 1e-8), p, m, v)
        return p, m, v

    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    for t, (q, s) in enumerate(_episodes(np.random.default_rng(seed), len(x_tr), steps, queries, support), start=1):
        params, m, v = step(params, m, v, t, q, s)
    return hard_knn_accuracy(np.asarray(embed(params, X)), y_tr, np.asarray(embed(params, jnp.asarray(x_te))), y_te)


def pixel_knn(seed: int) -> float:
    x_tr, x_te, y_tr, y_te = load_digits_split(seed)
    return hard_knn_accuracy(x_tr, y_tr, x_te, y_te)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    rows = {
        f"soft-kNN embedding, PyTorch (k={K}, eps={EPSILON})": lambda s: train_torch(s, args.steps),
        f"soft-kNN embedding, JAX (k={K}, eps={EPSILON})": lambda s: train_jax(s, args.steps),
        f"kNN on pixels (k={K})": pixel_knn,
        "cross-entropy MLP, same size": lambda s: train_torch(s, args.steps, soft=False),
    }
    print(f"digits, test accuracy over {args.seeds} seeds ({args.steps} steps):")
    print(f"| {'method':<48} | mean   | std    |\n|{'-' * 50}|--------|--------|")
    for name, fn in rows.items():
        accs = [fn(seed) for seed in range(args.seeds)]
        print(f"| {name:<48} | {statistics.mean(accs):.4f} | {statistics.pstdev(accs):.4f} |")


if __name__ == "__main__":
    main()
