"""asv benchmarks: ENOT (``softk.enot``) on Gaussian pairs with a known OT map, judged by L2-UVP.

Problem ``gaussian_pair(dim, seed)``: source ``N(m0, S0)``, target ``N(m1, S1)``,
means ``N(0, I)``, covariances ``Q diag(exp(U(-1, 1))) Q^T`` with ``Q`` a random
rotation (standard deviations within a factor ``e`` of each other), cost
``|x - y|^2 / 2``. The OT map is affine and known (:func:`softk.gaussian_ot.gaussian_map`);
L2-UVP (%) is measured on 4,096 fresh source points.

Methods, with the same networks (4 x 128 ELU MLP plus a quadratic term, or the
paper's plain MLP with ``quadratic=False``, on standardised data) and the same
Adam (lr 1e-3, betas (0.9, 0.9), cosine decay, batch 512):

* ``enot``: the trainer's defaults: the expectile regulariser, ``tau = 0.99``,
  weight 1 relative to the batch's cost scale (``expectile_scale="cost"``),
  ``T^ = T(x)``, the two networks swapping roles every other step
  (``bidirectional``, as in the paper's code);
* ``enot_uni``: the same in one direction (``f`` only maps, ``g`` only the dual);
* ``enot_paper``: the paper's absolute weight 1 (``expectile_scale="none"``),
  bidirectional;
* ``w2ot``: the amortised-conjugate baseline (W2OT), one direction: no expectile term; the
  conjugate ``argmin_y c(x, y) - g(y)`` solved by L-BFGS (memory 10,
  backtracking Armijo line search of at most 20 halvings) from the amortised
  ``T(x)`` to a gradient norm of 1e-5 within 20 iterations, the settings of
  OTT-JAX's ``W2NeuralDual`` default solver; ``T`` regresses onto the solution;
* ``baseline_5gd``: a cheap inexact variant: ``T(x)`` refined by 5 gradient
  steps of size 0.5, ``T`` trained on the objective;
* ``ott_enot``: OTT-JAX's ``ExpectileNeuralDual`` with its own defaults (its
  4 x 128 ELU MLPs, Adam 3e-4 without decay, roles swapping, raw data), same
  batches of 512 (needs ``ott-jax`` and ``flax``).

``run_case`` trains with the JAX trainer and records the L2-UVP every
``eval_every`` steps against the training wall and process-CPU time
(evaluation excluded), and the L-BFGS iterations and objective evaluations of
the last conjugate solve at each checkpoint; ``asv_bench/compare_enot.py`` runs
it over dimensions and methods. ``ENOTGaussian.track_l2_uvp`` is the asv view
of one short run.
"""

from __future__ import annotations

import time

import numpy as np

from softk.gaussian_ot import gaussian_map, gaussian_w2, l2_uvp

SETTINGS = dict(hidden=(128, 128, 128, 128), quadratic=True, standardize=True, lr=1e-3, lr_schedule="cosine",
                batch_size=512)
METHODS = {"enot": dict(tau=0.99, expectile_weight=1.0),
           "enot_uni": dict(tau=0.99, expectile_weight=1.0, bidirectional=False),
           "enot_paper": dict(tau=0.99, expectile_weight=1.0, expectile_scale="none"),
           "w2ot": dict(expectile_weight=0.0, conjugate="lbfgs", conjugate_steps=20, conjugate_gtol=1e-5,
                        amortization="regression", bidirectional=False),
           "baseline_5gd": dict(expectile_weight=0.0, conjugate="gradient", conjugate_steps=5, conjugate_lr=0.5,
                                bidirectional=False)}


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
    if method == "ott_enot":
        return _run_ott(dim, steps, eval_every, seed, sx, sy, x_test, t_star, m0, c0, m1, c1)
    trainer = ENOT(dim, framework=framework, seed=seed, lr_steps=steps, **{**SETTINGS, **METHODS[method], **overrides})
    curve, wall, cpu, evals = [], 0.0, 0.0, []
    for done in range(0, steps, eval_every):
        w0, c0_ = time.perf_counter(), time.process_time()
        trainer.fit(sx, sy, min(eval_every, steps - done), progress=False)
        wall, cpu = wall + time.perf_counter() - w0, cpu + time.process_time() - c0_
        curve.append((done + eval_every, wall, cpu, float(l2_uvp(np.asarray(trainer.transport(x_test)), t_star))))
        if trainer.last_conjugate is not None:
            evals.append([int(v) for v in trainer.last_conjugate])
    primal, dual = trainer.cost_estimate(x_test, y_test)
    return dict(dim=dim, method=method, curve=curve, w2=float(gaussian_w2(m0, c0, m1, c1)),
                w2_primal=2 * primal, w2_dual=2 * dual, conjugate=evals)


def _run_ott(dim, steps, eval_every, seed, sx, sy, x_test, t_star, m0, c0, m1, c1) -> dict:
    """OTT-JAX's ``ExpectileNeuralDual`` (defaults) on the same samplers; checkpoints through its callback."""
    import jax
    from ott.neural.methods.expectile_neural_dual import ExpectileNeuralDual

    rng = np.random.default_rng(seed)

    def loader(sampler):
        while True:
            yield sampler(rng, 512).astype(np.float32)

    solver = ExpectileNeuralDual(dim, num_train_iters=steps, valid_freq=steps + 1, rng=jax.random.key(seed))
    curve, spent, start = [], [0.0, 0.0], (time.perf_counter(), time.process_time())

    def callback(step, potentials):
        if (step + 1) % eval_every:
            return
        w0, c0_ = time.perf_counter(), time.process_time()
        uvp = float(l2_uvp(np.asarray(potentials.transport(x_test.astype(np.float32))), t_star))
        curve.append((step + 1, w0 - start[0] - spent[0], c0_ - start[1] - spent[1], uvp))
        spent[0] += time.perf_counter() - w0
        spent[1] += time.process_time() - c0_

    solver(loader(sx), loader(sy), loader(sx), loader(sy), callback=callback)
    return dict(dim=dim, method="ott_enot", curve=curve, w2=float(gaussian_w2(m0, c0, m1, c1)),
                w2_primal=float("nan"), w2_dual=float("nan"), conjugate=[])


class ENOTGaussian:
    """L2-UVP (%) after 500 steps (lr schedule over those steps), JAX trainer, batch 512."""

    params = ([2, 16], ["enot", "w2ot"])
    param_names = ["dim", "method"]
    timeout = 900
    number = 1
    repeat = 1

    def track_l2_uvp(self, dim, method):
        return run_case(dim, method, 500, eval_every=500)["curve"][-1][-1]

    track_l2_uvp.unit = "%"
