"""``softk.sinkhorn(..., method="newton")``: Newton on the semi-dual behind the public OT API.

It must give the Sinkhorn solution (plan, value, gradients) on every backend,
reach tight marginals in few steps where Sinkhorn needs thousands, work under
``jax.jit``, and refuse what it cannot do.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_sinkhorn import central_differences, numpy_value, problem, run

import softk
from softk import ot as sot

TIGHT = dict(tol=1e-12, max_iter=100_000)


def keep_geometry(data, geometry):
    """The problem as a cost matrix or as the two point clouds (with the weights)."""
    drop = ("x", "y") if geometry == "cost" else ("cost",)
    return {k: v for k, v in data.items() if k not in drop}


@pytest.mark.parametrize("geometry", ["cost", "clouds"])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_newton_matches_sinkhorn(backend, rng, geometry, batch):
    data = problem(rng, 12, 6, batch=batch)
    data = keep_geometry(data, geometry)
    arrays = {k: backend.asarray(v, "float64") for k, v in data.items()}
    newton = sot.sinkhorn(**arrays, epsilon=0.05, method="newton", **TIGHT)
    reference = sot.sinkhorn(**data, epsilon=0.05, **TIGHT)
    assert bool(newton.converged) and int(newton.n_iter) < 40
    np.testing.assert_allclose(backend.to_numpy(newton.plan), reference.plan, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(newton.cost), reference.cost, rtol=1e-11)
    # the potentials agree up to the gauge (f + c, g - c)
    f, g = backend.to_numpy(newton.f), backend.to_numpy(newton.g)
    shift = (f - reference.f).mean(-1, keepdims=True)
    np.testing.assert_allclose(f - shift, reference.f, atol=1e-9)
    np.testing.assert_allclose(g + shift, reference.g, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_newton_is_fast_where_sinkhorn_is_slow(backend, rng, dtype):
    """5 x 5 Gaussian clouds at epsilon 0.05: Sinkhorn needs ~10^4 iterations for 1e-9."""
    data = problem(np.random.default_rng(0), 5, 5)
    cost = backend.asarray(data["cost"], dtype)
    # float32: the reachable relative error is ~4 ulp max|C| / epsilon (1e-4 here), not 1e-5
    tol = 1e-12 if dtype == "float64" else 3e-4
    out = sot.sinkhorn(cost, epsilon=0.05, method="newton", tol=tol)
    slow = sot.sinkhorn(data["cost"], epsilon=0.05, tol=1e-9, max_iter=100_000)
    assert int(slow.n_iter) > 2000
    assert bool(out.converged) and int(out.n_iter) <= 30
    plan = backend.to_numpy(out.plan).astype(np.float64)
    exact_rows = 1e-14 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(plan.sum(1), np.full(5, 0.2), atol=exact_rows)
    np.testing.assert_allclose(plan.sum(0), np.full(5, 0.2), rtol=2 * tol)
    np.testing.assert_allclose(plan, slow.plan, atol=1e-8 if dtype == "float64" else 1e-4)


@pytest.mark.parametrize("geometry", ["cost", "clouds"])
@pytest.mark.parametrize("what", ["cost", "plan"])
def test_newton_gradients_match_central_differences(backend, rng, geometry, what):
    data = problem(rng)
    data = keep_geometry(data, geometry)
    params = dict(epsilon=0.3, tol=1e-13, max_iter=100_000)
    ref = numpy_value(data, what, method="newton", **params)
    cot = rng.normal(size=ref.shape)
    _, grads = run(backend, what, data, cot=cot, method="newton", **params)
    for name, grad in grads.items():
        fd = central_differences(data, what, cot, name, **params)
        np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=1e-6 * max(1.0, np.abs(fd).max()), err_msg=name)


def test_newton_warm_start(backend, rng):
    cost = backend.asarray(problem(rng, 40, 8)["cost"], "float64")
    first = sot.sinkhorn(cost, epsilon=0.01, method="newton", tol=1e-12)
    again = sot.sinkhorn(cost, epsilon=0.01, method="newton", tol=1e-12, init=(first.f, first.g))
    assert int(again.n_iter) <= 2 < int(first.n_iter)
    np.testing.assert_allclose(backend.to_numpy(again.plan), backend.to_numpy(first.plan), atol=1e-12)


def test_newton_without_continuation(rng):
    cost = problem(rng, 20, 6)["cost"]
    scaled = sot.sinkhorn(cost, epsilon=0.05, method="newton", tol=1e-12)
    direct = sot.sinkhorn(cost, epsilon=0.05, method="newton", tol=1e-12, scaling=False)
    assert bool(direct.converged)
    np.testing.assert_allclose(direct.plan, scaled.plan, atol=1e-12)


def test_newton_honest_non_convergence(backend, rng):
    cost = backend.asarray(problem(rng, 40, 8)["cost"], "float64")
    with pytest.warns(softk.NotConvergedWarning, match="sinkhorn did not converge"):
        out = sot.sinkhorn(cost, epsilon=1e-3, method="newton", max_iter=2, tol=1e-12)
    assert not bool(out.converged) and int(out.n_iter) <= 2 and float(out.error) > 1e-12
    assert np.isfinite(backend.to_numpy(out.plan)).all()


def test_newton_under_jax_jit_and_grad(rng):
    jax = pytest.importorskip("jax")
    cost = problem(rng)["cost"]
    value = jax.jit(lambda c: sot.sinkhorn(c, epsilon=0.1, method="newton", tol=1e-12).cost)
    grad = jax.jit(jax.grad(lambda c: sot.sinkhorn(c, epsilon=0.1, method="newton", tol=1e-12).cost))
    ref = sot.sinkhorn(cost, epsilon=0.1, tol=1e-12)
    np.testing.assert_allclose(float(value(cost)), float(ref.cost), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grad(cost)), ref.plan, atol=1e-10)


def test_newton_bad_arguments(rng):
    data = problem(rng)
    with pytest.raises(ValueError, match="method must be one of"):
        sot.sinkhorn(data["cost"], epsilon=0.1, method="lbfgs")
    with pytest.raises(ValueError, match="at least 2 targets"):
        sot.sinkhorn(data["cost"][:, :1], epsilon=0.1, method="newton")
    with pytest.raises(ValueError, match="not online"):
        sot.sinkhorn(x=data["x"], y=data["y"], epsilon=0.1, method="newton", online=True)
