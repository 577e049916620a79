"""Sparsity-constrained OT: softk (NumPy, PyTorch, JAX jit and eager) against POT 0.9.7, same run.

The problem of the issue: two clouds of n points in 2-D (standard normal, the
second shifted by +1), squared Euclidean cost divided by its maximum, uniform
weights, gamma = 1e-2, k = 2, float64, one thread. Reported per solver: wall
time and process CPU time (each library warmed up first: imports and, for JAX,
compilation are not counted: JAX runs the same problem once before the timed
call, jitted or eager; on a shared machine the CPU time is the better guide to
an unloaded wall time), iterations, the L1 marginal violation
``||P 1 - a||_1 + ||P^T 1 - b||_1`` of the returned plan, the largest number of
nonzeros in a column, the primal objective ``<P, C> + (gamma / 2) ||P||^2`` of
the returned plan, the dual value (the semi-dual at the returned ``alpha``,
evaluated by softk for every solver: a lower bound on the optimum), and the
gap between the two (a certificate only where the plan meets the marginals).

    OMP_NUM_THREADS=1 python asv_bench/compare_sparse_ot.py [n] [max_iter]
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")  # JAX: one thread too

import numpy as np  # noqa: E402

from softk.sparse_newton import evaluate  # noqa: E402
from softk.sparse_ot import sparse_ot  # noqa: E402

GAMMA, K = 1e-2, 2


def problem(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 1.0
    c = ((x[:, None] - y[None]) ** 2).sum(-1)
    return c / c.max()


def report(name: str, seconds: tuple, n_iter: int, c: np.ndarray, plan: np.ndarray, lower: float) -> str:
    n, m = plan.shape
    l1 = np.abs(plan.sum(1) - 1 / n).sum() + np.abs(plan.sum(0) - 1 / m).sum()
    primal = float((plan * c).sum() + GAMMA / 2 * (plan**2).sum())
    return (
        f"| {name} | {seconds[0]:.2f} | {seconds[1]:.2f} | {n_iter} | {l1:.2e} | {np.count_nonzero(plan, axis=0).max()} "
        f"| {primal:.8f} | {lower:.8f} | {primal - lower:.2e} |"
    )


def pot(c: np.ndarray, formulation: str, max_iter: int) -> str:
    import ot

    n, m = c.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    fn = ot.smooth.smooth_ot_semi_dual if formulation == "semi-dual" else ot.smooth.smooth_ot_dual
    t, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # POT 0.9.7 prints array shapes from its top-k
        plan, log = fn(a, b, c, GAMMA, reg_type="sparsity_constrained", max_nz=K, numItermax=max_iter, log=True)
    seconds = (time.perf_counter() - t, time.process_time() - cpu)
    lower = float(evaluate(np, c.T, a, b, log["alpha"], np.asarray(GAMMA), K, False)[0])  # the semi-dual at POT's alpha
    return report(f"POT {formulation} (L-BFGS-B)", seconds, int(log["res"].nit), c, plan, lower)


def softk_run(c: np.ndarray, backend: str, formulation: str, max_iter: int) -> str:
    """One timed call after a warm-up; ``jax`` is ``jax.jit`` (compiled first), ``jax-eager`` the
    second eager call on JAX arrays (the solve op is compiled on the first)."""

    def call(x):
        return sparse_ot(x, k=K, gamma=GAMMA, formulation=formulation, max_iter=max_iter)

    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        arr, warm = torch.asarray(c), torch.asarray(problem(20))
        run = lambda: _fields(call(arr))  # noqa: E731
    elif backend.startswith("jax"):
        import jax

        jax.config.update("jax_enable_x64", True)
        arr = warm = jax.numpy.asarray(c)
        fn = jax.jit(lambda x: _fields(call(x))) if backend == "jax" else lambda x: _fields(call(x))
        run = lambda: jax.block_until_ready(fn(arr))  # noqa: E731
    else:
        arr, warm = c, problem(20)
        run = lambda: _fields(call(arr))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "jax":
            run()  # compiles
        else:
            call(warm)  # imports and first-call overhead (eager JAX: compiles the ops for this shape)
        t, cpu = time.perf_counter(), time.process_time()
        plan, lower, n_iter = run()
        seconds = (time.perf_counter() - t, time.process_time() - cpu)
    name = f"softk {backend.replace('-eager', '')} {formulation}" + {"jax": " (jit)", "jax-eager": " (eager)"}.get(backend, "")
    return report(name, seconds, int(n_iter), c, np.asarray(plan), float(lower))


def _fields(r):
    return r.plan, r.dual_value, r.n_iter


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    max_iter = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    c = problem(n)
    print(f"n = m = {n}, gamma = {GAMMA}, k = {K}, max_iter = {max_iter}, float64, one thread\n")
    print("| solver | seconds | CPU seconds | iterations | L1 marginal violation | max nonzeros per column | primal objective | dual value | gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for formulation in ("semi-dual", "dual"):
        for backend in ("numpy", "torch", "jax", "jax-eager"):
            print(softk_run(c, backend, formulation, max_iter), flush=True)
    for formulation in ("semi-dual", "dual"):
        print(pot(c, formulation, max_iter), flush=True)


if __name__ == "__main__":
    main()
