"""OT transfer loss + gradient against one forward + backward of a linear layer (issue 12 target).

Target: ``softk.transfer.ot_transfer_loss`` value and gradient for student and
teacher activations of batch 256 x 512 neurons, PyTorch CPU float32, one
thread, within 3x the time of one forward + backward of a 512 -> 512
``torch.nn.Linear`` on the same batch (256 x 512 input; ``.sum().backward()``,
input and weights require gradients).

Two inputs (seed 0):

* ``gaussian``: independent N(0, 1) activations (every neuron about equally far
  from every other: a flat, easy problem);
* ``structured``: teacher ``relu(Z W)`` with ``Z`` 256 x 32 and ``W`` 32 x 512
  Gaussian (512 correlated neurons of rank 32), student the teacher with
  its neurons permuted plus N(0, 0.5^2) noise (a peaked plan).

Two gradient cases: ``student`` (the teacher frozen, as in distillation: the
gradient reaches the student only) and ``both`` (both layers require
gradients). The two timings alternate (``--repeats``
pairs, after two warm-up calls) so that load from other processes hits both
alike; reported are the median process CPU times and the medians of the
per-pair ratios of CPU time and of wall time (CPU time is the steadier on a
shared machine: it does not count time spent waiting for a core).

    OMP_NUM_THREADS=1 python asv_bench/compare_transfer.py
    OMP_NUM_THREADS=1 python asv_bench/compare_transfer.py --output asv_bench/TRANSFER_RESULTS.md
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import array_api_compat.torch as tx
import torch

import softk
from softk._ot.solved import solved_plan
from softk.transfer import _backward, _forward, _normalise, _solve, ot_transfer_loss


def inputs(kind: str, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if kind == "gaussian":
        return torch.randn(batch, width, generator=gen), torch.randn(batch, width, generator=gen)
    z = torch.randn(batch, 32, generator=gen)
    teacher = torch.relu(z @ torch.randn(32, width, generator=gen))
    perm = torch.randperm(width, generator=gen)
    return teacher[:, perm] + 0.5 * torch.randn(batch, width, generator=gen), teacher


def linear_step(layer: torch.nn.Linear, x: torch.Tensor) -> None:
    layer(x.detach().requires_grad_(True)).sum().backward()


def transfer_step(student: torch.Tensor, teacher: torch.Tensor, both: bool, **kwargs) -> None:
    s, t = student.detach().requires_grad_(True), teacher.detach().requires_grad_(both)
    ot_transfer_loss(s, t, **kwargs).backward()


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """``(process CPU seconds, wall seconds)`` of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn(*args, **kwargs)
    return time.process_time() - c0, time.perf_counter() - w0


def compare(kind: str, epsilon: float, both: bool, args) -> dict:
    student, teacher = inputs(kind, args.batch, args.width)
    layer = torch.nn.Linear(args.width, args.width)
    kwargs = dict(epsilon=epsilon, normalize=args.normalize, tol=args.tol)
    with warnings.catch_warnings():
        warnings.simplefilter("error", softk.NotConvergedWarning)
        for _ in range(2):
            linear_step(layer, student)
            transfer_step(student, teacher, both, **kwargs)
        pairs = [(timed(linear_step, layer, student), timed(transfer_step, student, teacher, both, **kwargs)) for _ in range(args.repeats)]
    s, t = (_normalise(tx, x, args.normalize)[0] for x in (student, teacher))
    n_iter = int(_solve_counted(s, t, epsilon, args.tol))
    med = {}
    for k, clock in enumerate(("cpu", "wall")):
        med[clock] = (
            statistics.median(p[0][k] for p in pairs),
            statistics.median(p[1][k] for p in pairs),
            statistics.median(p[1][k] / p[0][k] for p in pairs),
        )
    return dict(med, n_iter=n_iter)


def _solve_counted(s: torch.Tensor, t: torch.Tensor, epsilon: float, tol: float) -> int:
    """The loss's own solve (:func:`softk._ot.solved.solved_plan`), for its iteration count."""
    cost = tx.clip(tx.sum(s * s, axis=0)[:, None] + tx.sum(t * t, axis=0)[None, :] - 2.0 * (s.T @ t), min=0.0)
    log_w = torch.full((s.shape[1],), -math.log(s.shape[1]))
    return solved_plan(tx, cost, log_w, log_w, epsilon, tol=tol, max_iter=1000, scaling=False)[4]


def breakdown(kind: str, epsilon: float, args) -> dict:
    """Median CPU ms of the loss's parts, called one by one (what ``ot_transfer_loss`` runs)."""
    student, teacher = inputs(kind, args.batch, args.width)
    params = dict(epsilon=epsilon, normalize=args.normalize, debias=False, tol=args.tol, max_iter=1000, scaling=False)
    s, _ = _normalise(tx, student, args.normalize)
    t, _ = _normalise(tx, teacher, args.normalize)
    _, residuals = _forward(tx, student, teacher, **params)
    one = torch.tensor(1.0)
    parts = {
        "normalise both layers": lambda: (_normalise(tx, student, args.normalize), _normalise(tx, teacher, args.normalize)),
        "cost matrix and solve (plan, value)": lambda: _solve(tx, s, t, epsilon, args.tol, 1000, False),
        "gradient, student only (one matrix product)": lambda: _backward(tx, (student, teacher), residuals, one, **params, needs=(True, False)),
        "gradient, teacher too (a second product)": lambda: _backward(tx, (student, teacher), residuals, one, **params, needs=(False, True)),
    }
    result = {}
    for name, fn in parts.items():
        fn()
        result[name] = statistics.median(timed(fn)[0] for _ in range(args.repeats)) * 1e3
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.05, 0.01])
    parser.add_argument("--normalize", default="standardize")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = "load average {:.1f} {:.1f} {:.1f} on {} cores".format(*os.getloadavg(), os.cpu_count())
    lines = [
        f"# OT transfer loss vs a linear layer ({time.strftime('%Y-%m-%d %H:%M')}, {load})",
        "",
        f"PyTorch {torch.__version__} CPU, float32, {args.threads} thread(s); batch {args.batch}, "
        f"{args.width} student and {args.width} teacher neurons; normalize={args.normalize!r}, tol={args.tol:g}, "
        f"scaling off (the default); median of {args.repeats} alternating pairs.",
        "",
        "| input | epsilon | gradient for | Sinkhorn iterations | linear fwd+bwd, CPU ms | OT loss + grad, CPU ms | ratio, CPU time (target < 3) | ratio, wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("gaussian", "structured"):
        for eps in args.eps:
            for both in (False, True):
                r = compare(kind, eps, both, args)
                base, ot, ratio = r["cpu"]
                who = "both layers" if both else "student"
                lines.append(f"| {kind} | {eps:g} | {who} | {r['n_iter']} | {base * 1e3:.2f} | {ot * 1e3:.2f} | {ratio:.2f} | {r['wall'][2]:.2f} |")
                print(lines[-1], flush=True)
    lines += [
        "",
        f"## Where the time goes (structured input, epsilon {args.eps[0]:g}; median CPU ms of each part called alone)",
        "",
        "| part | CPU ms |",
        "|---|---|",
    ]
    parts = breakdown("structured", args.eps[0], args)
    lines += [f"| {name} | {ms:.2f} |" for name, ms in parts.items()]
    lines.append(f"| total of the parts | {sum(parts.values()):.2f} |")
    print("\n".join(lines[-len(parts) - 1 :]), flush=True)
    lines += ["", "Finished with load average {:.1f} {:.1f} {:.1f}.".format(*os.getloadavg())]
    if args.output:
        with open(args.output, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
