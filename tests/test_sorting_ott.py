"""Oracle tests: softk's sorting family against OTT-JAX's ``ott.tools.soft_sort`` (float64).

Values only: the gradients are checked against central differences of the same
function in test_sorting.py (an OTT gradient comparison costs ~25 s of compilation).

Same formulation (sigmoid of standardised scores, ``linspace(0, 1, m)`` targets,
squared cost, absolute epsilon), OTT run to a tight threshold. Conventions that
differ are converted explicitly: OTT's ranks are 0-based and scaled by
``(n - 1) / (m - 1)``, softk's are ``(n / m) * (1-based target index)``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ott")
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from ott.tools import soft_sort as ott_sort  # noqa: E402

from softk._ot.newton import semidual_newton, semidual_plan  # noqa: E402
from softk.sorting import soft_quantile, soft_rank, soft_sort  # noqa: E402

jax.config.update("jax_enable_x64", True)
EPS = 0.05
OTT_KW = dict(epsilon=EPS, threshold=1e-13, max_iterations=100_000)
N = 10


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(2, N)) * 3.0


@pytest.mark.parametrize("m", [N, 4])
def test_ranks_match_ott(x, m):
    ott = np.asarray(ott_sort.ranks(jnp.asarray(x), axis=-1, num_targets=m, **OTT_KW))
    target_index = ott * (m - 1) / (N - 1) + 1.0  # 1-based soft target index
    np.testing.assert_allclose(soft_rank(x, epsilon=EPS, m=m), (N / m) * target_index, atol=1e-10)


@pytest.mark.parametrize("m", [N, 4])
def test_sort_matches_ott(x, m):
    ott = np.asarray(ott_sort.sort(jnp.asarray(x), axis=-1, num_targets=m, **OTT_KW))
    np.testing.assert_allclose(soft_sort(x, epsilon=EPS, m=m), ott, atol=1e-10)
    np.testing.assert_allclose(soft_sort(x, epsilon=EPS, m=m, descending=True), ott[:, ::-1], atol=1e-10)


@pytest.mark.parametrize("q", [0.3, [0.2, 0.7]])
def test_quantile_matches_ott(x, q):
    ott = np.asarray(ott_sort.quantile(jnp.asarray(x), q=jnp.asarray(q), axis=-1, **OTT_KW))
    ours = soft_quantile(x, q, epsilon=EPS)  # default width: OTT's rule
    np.testing.assert_allclose(ours, ott.reshape(ours.shape), atol=1e-10)


def test_newton_solves_otts_sorted_topk_problem(x):
    # sort(topk=k): targets linspace(0, 1, k + 1) weighted [(n - k)/n, 1/n, ..., 1/n], read (P^T x / b)[1:]
    k = 3
    ott = np.asarray(ott_sort.sort(jnp.asarray(x), axis=-1, topk=k, **OTT_KW))
    s = 1.0 / (1.0 + np.exp(-(x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-10)))
    cost = (s[..., None] - np.linspace(0.0, 1.0, k + 1)) ** 2
    b = np.array([(N - k) / N] + [1.0 / N] * k)
    log_a, log_b = np.full(x.shape, -np.log(N)), np.broadcast_to(np.log(b), (2, k + 1))
    result = semidual_newton(np, cost, log_a, log_b, EPS)
    plan = semidual_plan(np, cost, log_a, log_b, result.g, EPS)
    ours = (np.swapaxes(plan, -1, -2) @ x[..., None])[..., 0] / b
    assert bool(result.converged)
    np.testing.assert_allclose(ours[:, 1:], ott, atol=1e-10)

