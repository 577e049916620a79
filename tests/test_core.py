"""The array-API core on its own: Sinkhorn, the plan's implicit VJP, the threshold solver, helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import sinkhorn_reference

from softk._ot.dense import sinkhorn_log
from softk._ot.implicit import plan_vjp
from softk._ot.plan import plan_from_potentials
from softk._threshold import soft_select
from softk._xp import add_at_rows, into, logsumexp, top_values


def _problem(rng, n=12, m=4):
    cost = rng.uniform(size=(n, m))
    a = rng.uniform(0.5, 1.5, size=n)
    b = rng.uniform(0.5, 1.5, size=m)
    return cost, a / a.sum(), b / b.sum()


def _namespace(backend):
    from array_api_compat import array_namespace

    return array_namespace(backend.asarray(np.zeros(1), "float64"))


def test_sinkhorn_matches_kernel_reference(backend, rng):
    cost, a, b = _problem(rng)
    xp = _namespace(backend)
    C, la, lb = (backend.asarray(v, "float64") for v in (cost, np.log(a), np.log(b)))
    result = sinkhorn_log(xp, C, la, lb, 0.1, tol=1e-13)
    assert bool(result.converged) and float(result.error) <= 1e-13
    plan = backend.to_numpy(plan_from_potentials(xp, C, la, lb, result.f, result.g, 0.1))
    np.testing.assert_allclose(plan, sinkhorn_reference(cost, a, b, 0.1), atol=1e-12)
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-14)  # columns exact after the g-update


def test_sinkhorn_is_batched(backend, rng):
    problems = [_problem(rng) for _ in range(3)]
    xp = _namespace(backend)
    C, la, lb = (backend.asarray(np.stack([p[i] if i == 0 else np.log(p[i]) for p in problems]), "float64") for i in range(3))
    result = sinkhorn_log(xp, C, la, lb, 0.05, tol=1e-12)
    plan = backend.to_numpy(plan_from_potentials(xp, C, la, lb, result.f, result.g, 0.05))
    for i, (cost, a, b) in enumerate(problems):
        np.testing.assert_allclose(plan[i], sinkhorn_reference(cost, a, b, 0.05), atol=1e-11)


def test_sinkhorn_stays_finite_at_tiny_epsilon(rng):
    cost, a, b = _problem(rng, 30, 5)
    result = sinkhorn_log(np, cost, np.log(a), np.log(b), 1e-4, tol=1e-9, max_iter=5000)
    plan = plan_from_potentials(np, cost, np.log(a), np.log(b), result.f, result.g, 1e-4)
    assert np.isfinite(plan).all() and np.isfinite(result.f).all()
    np.testing.assert_allclose(plan.sum(0), b, atol=1e-12)


def test_sinkhorn_reports_max_iter(rng):
    cost, a, b = _problem(rng)
    result = sinkhorn_log(np, cost, np.log(a), np.log(b), 1e-3, tol=1e-14, max_iter=20)
    assert not bool(result.converged) and int(result.n_iter) == 20


@pytest.mark.parametrize("m", [2, 3, 6])
def test_plan_vjp_matches_finite_differences(rng, m):
    cost, a, b = _problem(rng, 9, m)
    eps = 0.2

    def plan(c):
        r = sinkhorn_log(np, c, np.log(a), np.log(b), eps, tol=1e-14, max_iter=100_000)
        return plan_from_potentials(np, c, np.log(a), np.log(b), r.f, r.g, eps)

    V = rng.normal(size=cost.shape)
    grad = plan_vjp(np, plan(cost), V, eps)
    fd = np.zeros_like(cost)
    for idx in np.ndindex(cost.shape):
        e = np.zeros_like(cost)
        e[idx] = 1e-6
        fd[idx] = ((plan(cost + e) - plan(cost - e)) * V).sum() / 2e-6
    np.testing.assert_allclose(grad, fd, atol=1e-8)


def test_soft_select_recentres_when_the_root_is_far(backend):
    # k = 1 of n = 3e6 at a high temperature: the root sits log(n) ~ 15 scaled units past the
    # hard midpoint, beyond float32's window (~14), so the solver must move its centre once.
    xp = _namespace(backend)
    n = 3_000_000
    grid = np.linspace(0.0, 1.0, n)
    result = soft_select(xp, backend.asarray(grid[None, :], "float32"), 1, backend.asarray(np.array([[0.05]]), "float32"), largest=True)
    a = backend.to_numpy(result.indicator)[0].astype(np.float64)
    assert bool(result.converged) and int(result.n_iter) > 1
    np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-5)
    # deep in the tail A_i ~ exp(scale * x_i - t): the ratios are fixed by the scores
    np.testing.assert_allclose(a[:: n // 10] / a[0], np.exp(0.05 * grid[:: n // 10]), rtol=1e-4)
    np.testing.assert_allclose(backend.to_numpy(result.sensitivity)[0], a * (1 - a), rtol=1e-5)


@pytest.mark.parametrize("k", [1, 1023, 2046])
def test_soft_select_tied_rows_at_the_window_bound(backend, k):
    # All scores tied: from the midpoint the root is tau = log((n - k) / k), up to log(n - 1) = 7.6
    # of float32's window of 9.6, the edge of the bound under which there is no recentring loop.
    xp = _namespace(backend)
    n = 2047
    x = backend.asarray(np.zeros((2, n)), "float32")
    result = soft_select(xp, x, k, backend.asarray(np.array([[1.0], [1e4]]), "float32"), largest=True)
    a = backend.to_numpy(result.indicator).astype(np.float64)
    assert bool(result.converged)
    np.testing.assert_allclose(a, k / n, rtol=1e-5)


def test_soft_select_recentres_past_the_window_bound(backend):
    # k - 1 entries selected and the n - k + 1 others tied with the k-th: the root is
    # tau = log(n - k) = 8.7 from the midpoint, past 0.9 of float32's window (8.65), in a row
    # too short for the reduced start (n < 4 (k + 17)): the solver must recentre once.
    xp = _namespace(backend)
    n, k = 8000, 2000
    x = np.zeros((1, n))
    x[0, : k - 1] = 1.0
    result = soft_select(xp, backend.asarray(x, "float32"), k, backend.asarray(np.array([[1e3]]), "float32"), largest=True)
    a = backend.to_numpy(result.indicator)[0].astype(np.float64)
    assert bool(result.converged)
    np.testing.assert_allclose(a[: k - 1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(a[k - 1 :], 1.0 / (n - k + 1), rtol=5e-3)  # float32 sums of 2000


def test_logsumexp_is_stable(backend):
    xp = _namespace(backend)
    z = backend.asarray(np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [-1000.0, 0.0]]), "float64")
    out = backend.to_numpy(logsumexp(xp, z, axis=-1))
    np.testing.assert_allclose(out[[0, 2]], [1000.0 + math.log(2.0), 0.0])
    assert out[1] == -np.inf


@pytest.mark.parametrize("count", [1, 5, 17])
@pytest.mark.parametrize("largest", [True, False])
def test_top_values(backend, rng, largest, count):
    xp = _namespace(backend)
    x = rng.normal(size=(3, 17))
    vals, top = top_values(xp, backend.asarray(x, "float64"), count, largest=largest)
    expected = (-np.sort(-x, axis=-1) if largest else np.sort(x, axis=-1))[:, :count]
    np.testing.assert_array_equal(backend.to_numpy(vals), expected)
    if top is not None:  # the index of the first-ranked entry, when the partial sort gives it
        np.testing.assert_array_equal(backend.to_numpy(top), np.argmax(x, axis=-1) if largest else np.argmin(x, axis=-1))


def test_into_writes_in_place_where_the_library_allows(backend):
    xp = _namespace(backend)
    buf = backend.asarray(np.zeros((2, 3)), "float64")
    x = backend.asarray(np.arange(6.0).reshape(2, 3), "float64")
    row = backend.asarray(np.array([[1.0], [-2.0]]), "float64")
    out = into(xp, buf, xp.maximum, x, row)
    np.testing.assert_array_equal(backend.to_numpy(out), np.maximum(np.arange(6.0).reshape(2, 3), [[1.0], [-2.0]]))
    if backend.name in ("numpy", "torch", "cupy"):
        assert out is buf
    else:  # immutable (JAX) or no out= (strict): a new array, the buffer untouched
        np.testing.assert_array_equal(backend.to_numpy(buf), 0.0)


def test_add_at_rows(backend):
    xp = _namespace(backend)
    g = backend.asarray(np.zeros((2, 3, 4)), "float64")
    index = backend.asarray(np.array([[0, 3, 1], [2, 2, 0]]), "int64")
    value = backend.asarray(np.arange(6.0).reshape(2, 3), "float64")
    out = backend.to_numpy(add_at_rows(xp, g, index, value))
    expected = np.zeros((2, 3, 4))
    for i in range(2):
        for j in range(3):
            expected[i, j, [[0, 3, 1], [2, 2, 0]][i][j]] += 3 * i + j
    np.testing.assert_array_equal(out, expected)
