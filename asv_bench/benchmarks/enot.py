"""asv benchmarks: ENOT (``softk.enot``) on Gaussian pairs with a known OT map, judged by L2-UVP.

Problem ``gaussian_pair(dim, seed)``: source ``N(m0, S0)``, target ``N(m1, S1)``,
means ``N(0, I)``, covariances ``Q diag(exp(U(-1, 1))) Q^T`` with ``Q`` a random
rotation (standard deviations within a factor ``e`` of each other), cost
``|x - y|^2 / 2``. The OT map is affine and known (:func:`softk.gaussian_ot.gaussian_map`);
L2-UVP (%) is measured on 4,096 fresh source points.

Methods, with the same networks (4 x 128 ELU MLP plus a quadratic term, on
standardised data) and the same Adam (lr 1e-3, betas (0.9, 0.9), cosine decay,
batch 512):

* ``enot``: the expectile regulariser, ``tau = 0.99``, weight 1, ``T^ = T(x)``,
  the two networks swapping roles every other step (``bidirectional``, as in
  the paper's code);
* ``enot_uni``: ENOT in one direction (``f`` only maps, ``g`` only the dual);
* ``baseline``: no expectile term, ``T(x)`` refined by 5 gradient steps on
  ``c(x, y) - g(y)`` (step 0.5) before the dual update (W2OT-style inner
  conjugate solve), one direction;
* ``baseline_bi``: the baseline with the role swapping of ``enot``.

``run_case`` trains with the JAX trainer and records the L2-UVP every
``eval_every`` steps against the training wall and process-CPU time
(evaluation excluded); ``asv_bench/compare_enot.py`` runs it over dimensions
and methods. ``ENOTGaussian.track_l2_uvp`` is the asv view of one short run.
"""

from __future__ import annotations

import time

import numpy as np

from softk.gaussian_ot import gaussian_map, gaussian_w2, l2_uvp

SETTINGS = dict(hidden=(128, 128, 128, 128), quadratic=True, standardize=True, lr=1e-3, lr_schedule="cosine",
                batch_size=512)
METHODS = {"enot": dict(tau=0.99, expectile_weight=1.0, bidirectional=True),
           "enot_uni": dict(tau=0.99, expectile_weight=1.0, bidirectional=False),
           "baseline": dict(expectile_weight=0.0, conjugate_steps=5, conjugate_lr=0.5, bidirectional=False),
           "baseline_bi": dict(expectile_weight=0.0, conjugate_steps=5, conjugate_lr=0.5, bidirectional=True)}


def gaussian_pair(dim: int, seed: int = 0):
    """``((m0, S0, m1, S1), sampler_x, sampler_y)`` for the random Gaussian pair described above."""
    r = np.random.default_rng(seed)

    def cov():
        q, _ = np.linalg.qr(r.normal(size=(dim, dim)))
        return (q * np.exp(r.uniform(-1, 1, dim))) @ q.T

    m0, c0, m1, c1 = r.normal(size=dim), cov(), r.normal(size=dim), cov()
    l0, l1 = np.linalg.cholesky(c0), np.linalg.cholesky(c1)
    return ((m0, c0, m1, c1), lambda g, n: m0 + g.normal(size=(n, dim)) @ l0.T,
            lambda g, n: m1 + g.normal(size=(n, dim)) @ l1.T)


def run_case(dim: int, method: str, steps: int, *, eval_every: int, seed: int = 0, framework: str = "jax",
             **overrides) -> dict:
    """Train one method on ``gaussian_pair(dim, seed)``; return the L2-UVP curve and the W2 estimates."""
    from softk.enot import ENOT

    (m0, c0, m1, c1), sx, sy = gaussian_pair(dim, seed)
    a, b = gaussian_map(m0, c0, m1, c1)
    x_test = sx(np.random.default_rng(10_000 + seed), 4096)
    y_test = sy(np.random.default_rng(20_000 + seed), 4096)
    t_star = x_test @ a + b
    trainer = ENOT(dim, framework=framework, seed=seed, lr_steps=steps, **{**SETTINGS, **METHODS[method], **overrides})
    curve, wall, cpu = [], 0.0, 0.0
    for done in range(0, steps, eval_every):
        w0, c0_ = time.perf_counter(), time.process_time()
        trainer.fit(sx, sy, min(eval_every, steps - done), progress=False)
        wall, cpu = wall + time.perf_counter() - w0, cpu + time.process_time() - c0_
        curve.append((done + eval_every, wall, cpu, float(l2_uvp(np.asarray(trainer.transport(x_test)), t_star))))
    primal, dual = trainer.cost_estimate(x_test, y_test)
    return dict(dim=dim, method=method, curve=curve, w2=float(gaussian_w2(m0, c0, m1, c1)),
                w2_primal=2 * primal, w2_dual=2 * dual)


class ENOTGaussian:
    """L2-UVP (%) after 500 steps (lr schedule over those steps), JAX trainer, batch 512."""

    params = ([2, 16], ["enot", "baseline"])
    param_names = ["dim", "method"]
    timeout = 900
    number = 1
    repeat = 1

    def track_l2_uvp(self, dim, method):
        return run_case(dim, method, 500, eval_every=500)["curve"][-1][-1]

    track_l2_uvp.unit = "%"
