"""Learn the optimal transport map between two Gaussians with ENOT, and check it against the closed form.

The source and target are random Gaussians in ``--dim`` dimensions (random
means, covariances with standard deviations within a factor ``e``); their OT
map for the cost ``|x - y|^2 / 2`` is affine and known
(:func:`softk.gaussian_ot.gaussian_map`), so the learnt map is judged by
L2-UVP, and its estimates of ``W2^2`` by the closed-form value.

    python examples/enot_gaussians.py                          # PyTorch, D = 8, 1,000 steps
    python examples/enot_gaussians.py --framework jax --dim 64 --steps 1500
    python examples/enot_gaussians.py --framework jax --w2ot                 # the amortised-conjugate baseline
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from softk.enot import ENOT
from softk.gaussian_ot import gaussian_map, gaussian_w2, l2_uvp


def gaussian_pair(dim: int, seed: int):
    """``(m0, S0, m1, S1)`` and samplers ``sampler(rng, n)`` for the two Gaussians."""
    r = np.random.default_rng(seed)

    def cov():
        q, _ = np.linalg.qr(r.normal(size=(dim, dim)))
        return (q * np.exp(r.uniform(-1, 1, dim))) @ q.T

    m0, c0, m1, c1 = r.normal(size=dim), cov(), r.normal(size=dim), cov()
    l0, l1 = np.linalg.cholesky(c0), np.linalg.cholesky(c1)
    sample_x = lambda g, n: m0 + g.normal(size=(n, dim)) @ l0.T  # noqa: E731
    sample_y = lambda g, n: m1 + g.normal(size=(n, dim)) @ l1.T  # noqa: E731
    return (m0, c0, m1, c1), sample_x, sample_y


def main(dim: int = 8, steps: int = 1000, framework: str = "torch", seed: int = 0, **options) -> float:
    """Train, print the L2-UVP and the W2^2 estimates, return the L2-UVP (%)."""
    (m0, c0, m1, c1), sample_x, sample_y = gaussian_pair(dim, seed)
    options = {"lr": 1e-3, "lr_schedule": "cosine", "batch_size": 512, **options}
    trainer = ENOT(dim, framework=framework, seed=seed, **options)
    start = time.perf_counter()
    trainer.fit(sample_x, sample_y, steps)
    seconds = time.perf_counter() - start
    a, b = gaussian_map(m0, c0, m1, c1)
    x, y = sample_x(np.random.default_rng(seed + 1), 4096), sample_y(np.random.default_rng(seed + 2), 4096)
    uvp = float(l2_uvp(np.asarray(trainer.transport(x)), x @ a + b))
    primal, dual = trainer.cost_estimate(x, y)
    print(f"D = {dim}, {framework}, {steps} steps in {seconds:.0f} s: L2-UVP {uvp:.3f} %")
    print(f"W2^2: closed form {float(gaussian_w2(m0, c0, m1, c1)):.4f}, "
          f"ENOT primal {2 * primal:.4f}, dual {2 * dual:.4f}")
    return uvp


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--w2ot", action="store_true", help="train the W2OT baseline (L-BFGS conjugates) instead")
    args = parser.parse_args()
    w2ot = dict(expectile_weight=0.0, conjugate="lbfgs", amortization="regression", bidirectional=False)
    main(args.dim, args.steps, args.framework, args.seed, **(w2ot if args.w2ot else {}))
