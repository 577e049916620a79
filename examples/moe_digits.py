"""A small mixture-of-experts classifier on scikit-learn's digits: softmax top-1 gating with
capacity dropping against the sparsity-constrained OT router (:func:`softk.moe.moe_route`).

Each minibatch of ``TOKENS`` images is a set of tokens routed to ``EXPERTS`` small
MLPs, each taking at most ``capacity = TOKENS / EXPERTS`` tokens (capacity factor 1):

* softmax: each token goes to its top-1 expert, weighted by its probability; tokens
  beyond an expert's capacity are dropped (only the residual path carries them);
* OT: :class:`softk.backends.torch_moe.OTRouter`, at most ``capacity`` tokens per
  expert and a balanced load by construction; the plan is the combine weights.

Reported on the test set, mean and spread over seeds: accuracy, fraction of tokens
dropped, and load imbalance (the coefficient of variation of the tokens each
expert processes per batch).

    python examples/moe_digits.py [--seeds 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings

import numpy as np
import torch
from torch import nn

from softk.backends.torch_moe import MoE, OTRouter
from softk.moe import Routing

TOKENS, EXPERTS, DIM, HIDDEN = 64, 4, 32, 32


class SoftmaxTop1(nn.Module):
    """Switch-style gating: top-1 expert, weight = its probability, drop beyond capacity."""

    def __init__(self, dim: int, experts: int, factor: float = 1.0):
        super().__init__()
        self.scores, self.experts, self.factor = nn.Linear(dim, experts), experts, factor

    def forward(self, x: torch.Tensor) -> Routing:
        probs = self.scores(x).softmax(-1)
        top = probs.argmax(-1)
        onehot = nn.functional.one_hot(top, self.experts).to(x.dtype)
        capacity = math.ceil(self.factor * x.shape[0] / self.experts)
        position = onehot.cumsum(0) * onehot  # 1-based arrival order within the chosen expert
        dispatch = onehot * (position <= capacity)
        return Routing(combine=dispatch * probs, dispatch=dispatch, dropped=1.0 - dispatch.sum(-1))


class Classifier(nn.Module):
    def __init__(self, router: nn.Module):
        super().__init__()
        self.embed, self.moe, self.head = nn.Linear(64, DIM), MoE(DIM, EXPERTS, HIDDEN, router), nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        h, routing = self.moe(torch.relu(self.embed(x)))
        return self.head(h), routing


def make_router(kind: str, tokens: int = TOKENS) -> nn.Module:
    if kind == "softmax":
        return SoftmaxTop1(DIM, EXPERTS)
    return OTRouter(DIM, EXPERTS, capacity=math.ceil(tokens / EXPERTS))


def data(seed: int, limit: int | None = None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    f = lambda a: torch.tensor((a - mean) / std)  # noqa: E731
    return f(x_tr), f(x_te), torch.tensor(y_tr), torch.tensor(y_te)


def run(kind: str, seed: int, epochs: int, limit: int | None = None) -> dict:
    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = data(seed, limit)
    model = Classifier(make_router(kind))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(x_tr))
        for i in range(0, len(order) - TOKENS + 1, TOKENS):  # full batches: the capacity is fixed
            idx = order[i : i + TOKENS]
            loss = nn.functional.cross_entropy(model(x_tr[idx])[0], y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    correct, dropped, imbalance, total = 0, [], [], 0
    with torch.no_grad():
        for i in range(0, len(x_te) - TOKENS + 1, TOKENS):
            logits, routing = model(x_te[i : i + TOKENS])
            correct += int((logits.argmax(-1) == y_te[i : i + TOKENS]).sum())
            total += TOKENS
            dropped.append(float((routing.dispatch.sum(-1) == 0).float().mean()))
            load = routing.dispatch.sum(0)
            imbalance.append(float(load.std(unbiased=False) / load.mean()))
    return dict(accuracy=correct / total, dropped=statistics.mean(dropped), imbalance=statistics.mean(imbalance))


def summary(kind: str, seeds: int, epochs: int, limit: int | None = None) -> dict:
    runs = [run(kind, s, epochs, limit) for s in range(seeds)]
    return {key: (statistics.mean(r[key] for r in runs), statistics.pstdev(r[key] for r in runs)) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # solver notes at tight capacities; the gap is reported as dropped mass
    print(f"digits, {TOKENS} tokens per batch, {EXPERTS} experts, capacity {TOKENS // EXPERTS} (factor 1), "
          f"{args.epochs} epochs, {args.seeds} seeds (mean +- std)\n")
    print("| router | test accuracy | tokens dropped | load imbalance (CV) |")
    print("| --- | --- | --- | --- |")
    for kind in ("softmax", "ot"):
        s = summary(kind, args.seeds, args.epochs)
        cells = " | ".join(f"{m:.3f} +- {sd:.3f}" for m, sd in (s["accuracy"], s["dropped"], s["imbalance"]))
        print(f"| {'softmax top-1 + capacity dropping' if kind == 'softmax' else 'sparsity-constrained OT'} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
