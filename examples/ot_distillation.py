"""OT representation transfer (Li et al. 2020) on scikit-learn's digits: distillation and inductive transfer.

The regulariser is ``softk.backends.torch_transfer.OTTransferLoss``: the
entropic OT cost between the student's and the teacher's hidden neurons (each
neuron: its standardised activations over the batch), added to the task loss
``L = L_task + lambda * OT``. It ignores the order of the neurons and allows
layers of different widths.

Distillation: a teacher MLP 64-256-256-10 is trained on the whole training
half. A student 64-32-10 learns from only ``--labelled`` labelled training
examples (a small, stratified subset) and, as in distillation, sees a
transfer batch of unlabelled training inputs each step, on which the teacher's
last hidden layer (256 neurons) is compared with the student's (32 neurons):

(a) labels only; (b) ``lambda * mean ||h_s W + c - h_t||^2`` with a learned
projection ``W`` (32 -> 256, FitNets-style L2 feature matching); (c)
``lambda * OT(h_s, h_t)``.

Inductive transfer: the teacher (64-128-128-5) is trained on digits 0-4; a
student of the same architecture learns digits 5-9 from ``--shots``
labelled examples per class, without and with the OT regulariser between
its two hidden layers and the teacher's (on the student's own batch: the
teacher's features of the new digits), either from scratch or fine-tuned
from the teacher's hidden layers (new output layer; there the debiased
divergence, whose gradient vanishes at the start, where the layers coincide).

Run ``python examples/ot_distillation.py`` for both tables (mean and
standard deviation of the test accuracy over ``--seeds`` seeds; a few CPU
minutes), ``--experiment distill`` or ``--experiment transfer`` for one.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from softk.backends.torch_transfer import OTTransferLoss

EPSILON = 0.05  # on the standardised cost, which lies in [0, 4]
LAMBDA_OT, LAMBDA_L2 = 1.0, 1.0
LR = 3e-3


def digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised digits, a stratified half for training and half for testing."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.5, random_state=seed, stratify=data.target)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-3
    return (x_tr - mean) / std, (x_te - mean) / std, y_tr, y_te


def mlp(widths: list[int]) -> torch.nn.ModuleList:
    """Linear layers; ReLU between them (applied by :func:`hidden`)."""
    return torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))


def hidden(layers: torch.nn.ModuleList, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(hidden activations, logits)``."""
    acts = []
    for layer in layers[:-1]:
        x = torch.relu(layer(x))
        acts.append(x)
    return acts, layers[-1](x)


def accuracy(layers: torch.nn.ModuleList, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((hidden(layers, torch.asarray(x))[1].argmax(1).numpy() == y).mean())


def train_teacher(x: np.ndarray, y: np.ndarray, widths: list[int], steps: int, seed: int) -> torch.nn.ModuleList:
    torch.manual_seed(seed)
    net = mlp(widths)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    X, Y = torch.asarray(x), torch.asarray(y)
    for _ in range(steps):
        idx = torch.asarray(rng.choice(len(x), 128, replace=False))
        loss = torch.nn.functional.cross_entropy(hidden(net, X[idx])[1], Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.requires_grad_(False)


def stratified(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)])


def distillation(seed: int, method: str, *, labelled: int = 100, steps: int = 300, teacher_steps: int = 600, transfer_batch: int = 128) -> float:
    """Test accuracy of the 64-32-10 student; ``method`` in ("labels", "l2", "ot")."""
    x_tr, x_te, y_tr, y_te = digits(seed)
    teacher = train_teacher(x_tr, y_tr, [64, 256, 256, 10], teacher_steps, seed)
    rng = np.random.default_rng(seed + 1)
    sub = stratified(y_tr, labelled // 10, rng)
    torch.manual_seed(seed + 2)
    student = mlp([64, 32, 10])
    project = torch.nn.Linear(32, 256)
    params = list(student.parameters()) + (list(project.parameters()) if method == "l2" else [])
    opt = torch.optim.Adam(params, lr=LR)
    ot = OTTransferLoss(EPSILON, weight=LAMBDA_OT)
    X, Y = torch.asarray(x_tr), torch.asarray(y_tr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(hidden(student, X[sub])[1], Y[sub])
        if method != "labels":
            xb = X[torch.asarray(rng.choice(len(x_tr), transfer_batch, replace=False))]
            h_s, h_t = hidden(student, xb)[0][-1], hidden(teacher, xb)[0][-1]
            if method == "ot":
                loss = loss + ot(h_s, h_t)
            else:
                loss = loss + LAMBDA_L2 * torch.mean((project(h_s) - h_t) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return accuracy(student, x_te, y_te)


def inductive_transfer(seed: int, weight: float, *, shots: int = 5, steps: int = 300, teacher_steps: int = 600, layers: int = 2, fine_tune: bool = False, debias: bool = False) -> float:
    """Test accuracy on digits 5-9 of a 64-128-128-5 student trained on ``shots`` examples per class,
    with ``weight * OT`` on its first ``layers`` hidden layers (``weight=0``: no regulariser); from
    scratch, or (``fine_tune``) from the teacher's hidden layers with a new output layer."""
    x_tr, x_te, y_tr, y_te = digits(seed)
    source, target_tr, target_te = y_tr < 5, y_tr >= 5, y_te >= 5
    teacher = train_teacher(x_tr[source], y_tr[source], [64, 128, 128, 5], teacher_steps, seed)
    rng = np.random.default_rng(seed + 1)
    x_new, y_new = x_tr[target_tr], y_tr[target_tr] - 5
    sub = stratified(y_new, shots, rng)
    torch.manual_seed(seed + 2)
    student = mlp([64, 128, 128, 5])
    if fine_tune:
        for mine, theirs in zip(student[:-1], teacher[:-1]):
            mine.load_state_dict(theirs.state_dict())
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    ot = OTTransferLoss(EPSILON, weight=weight, debias=debias)
    X, Y = torch.asarray(x_new[sub]), torch.asarray(y_new[sub])
    with torch.no_grad():
        teacher_acts = hidden(teacher, X)[0]
    for _ in range(steps):
        acts, logits = hidden(student, X)
        loss = torch.nn.functional.cross_entropy(logits, Y)
        if weight > 0:
            loss = loss + sum(ot(h_s, h_t) for h_s, h_t in zip(acts[:layers], teacher_acts[:layers]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return accuracy(student, x_te[target_te], y_te[target_te] - 5)


def table(title: str, rows: dict, seeds: int) -> None:
    print(f"\n{title}\n\n| method | mean | std | per seed |\n|---|---|---|---|")
    for name, fn in rows.items():
        accs = [fn(seed) for seed in range(seeds)]
        print(f"| {name} | {statistics.mean(accs):.4f} | {statistics.stdev(accs):.4f} | {' '.join(f'{a:.3f}' for a in accs)} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--experiment", choices=("both", "distill", "transfer"), default="both")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.experiment in ("both", "distill"):
        kw = dict(labelled=args.labelled, steps=args.steps)
        table(
            f"Distillation: digits, student 64-32-10 with {args.labelled} labels, teacher 64-256-256-10 on all "
            f"training labels; transfer batch 128 unlabelled; {args.steps} Adam steps (lr {LR}); "
            f"OT eps {EPSILON}, lambda {LAMBDA_OT}; L2 lambda {LAMBDA_L2}; test accuracy over {args.seeds} seeds",
            {
                "(a) labels only": lambda s: distillation(s, "labels", **kw),
                "(b) L2 feature match, learned projection": lambda s: distillation(s, "l2", **kw),
                "(c) OT transfer loss": lambda s: distillation(s, "ot", **kw),
            },
            args.seeds,
        )
    if args.experiment in ("both", "transfer"):
        kw = dict(shots=args.shots, steps=args.steps)
        table(
            f"Inductive transfer: teacher 64-128-128-5 on digits 0-4; student (same architecture) on digits 5-9 with "
            f"{args.shots} labels per class; {args.steps} Adam steps (lr {LR}); OT eps {EPSILON}, lambda {LAMBDA_OT} "
            f"per hidden layer (both); test accuracy on digits 5-9 over {args.seeds} seeds",
            {
                "from scratch, no regulariser": lambda s: inductive_transfer(s, 0.0, **kw),
                "from scratch, OT regulariser": lambda s: inductive_transfer(s, LAMBDA_OT, **kw),
                "fine-tuned from the teacher, no regulariser": lambda s: inductive_transfer(s, 0.0, fine_tune=True, **kw),
                "fine-tuned from the teacher, OT regulariser (debiased)": lambda s: inductive_transfer(s, LAMBDA_OT, fine_tune=True, debias=True, **kw),
            },
            args.seeds,
        )


if __name__ == "__main__":
    main()
