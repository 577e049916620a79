"""Conformance of the OT sorting family on every backend: soft_sort, soft_rank, soft_quantile,
soft_topk_sorted and the semi-dual Newton solver behind them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from array_api_compat import array_namespace, device
from conftest import Op, central_difference
from reference import sinkhorn_reference

import softk
from softk._ot.dense import sinkhorn_log
from softk._ot.newton import semidual_newton
from softk._ot.plan import plan_from_potentials
from softk.sorting import soft_quantile, soft_rank, soft_sort
from softk.sorting_topk import soft_topk_sorted

# ---------------------------------------------------------------- float64 NumPy references


def _ctv_plan(x, b, eps):
    """The CTV 2019 plan for one row: sigmoid of standardised x to linspace(0, 1) targets."""
    s = 1.0 / (1.0 + np.exp(-(x - x.mean()) / (x.std() + 1e-10)))
    y = np.linspace(0.0, 1.0, len(b))
    return sinkhorn_reference((s[:, None] - y) ** 2, np.full(len(x), 1.0 / len(x)), b, eps)


def sort_reference(x, eps, m):
    b = np.full(m, 1.0 / m)
    return _ctv_plan(x, b, eps).T @ x / b


def rank_reference(x, eps, m):
    n, b = len(x), np.full(m, 1.0 / m)
    return n * _ctv_plan(x, b, eps) @ (n * np.cumsum(b))


def quantile_reference(x, q, w, eps):
    b = np.array([q - w / 2, w, 1 - q - w / 2])
    return (_ctv_plan(x, b, eps).T @ x / b)[1]


def topk_sorted_reference(x, k, eps, largest=True):
    y = -x if largest else x
    n = len(x)
    dist = (y[:, None] - np.arange(k + 1.0)) ** 2
    b = np.array([1.0 / n] * k + [(n - k) / n])
    return n * sinkhorn_reference(dist / dist.max(), np.full(n, 1.0 / n), b, eps)[:, :k]


def per_row(fn, x, *args):
    return np.stack([fn(row, *args) for row in x])


def few_jax_compilations(backend, keep):
    """JAX compiles each (operator, parameters, shape) once, ~2-5 s here: run a representative subset."""
    if backend.name == "jax" and not keep:
        pytest.skip("JAX: each configuration costs a compilation; a representative subset runs")


TOL = {"float64": 1e-9, "float32": 3e-5}
OPS = {  # name: (softk call, reference on one row), at eps = 0.05
    "sort": (Op(soft_sort, epsilon=0.05), lambda r: sort_reference(r, 0.05, len(r))),
    "sort_m4": (Op(soft_sort, epsilon=0.05, m=4), lambda r: sort_reference(r, 0.05, 4)),
    "rank": (Op(soft_rank, epsilon=0.05), lambda r: rank_reference(r, 0.05, len(r))),
    "rank_m3": (Op(soft_rank, epsilon=0.05, m=3), lambda r: rank_reference(r, 0.05, 3)),
    "quantile": (Op(soft_quantile, 0.3, epsilon=0.05, width=0.1), lambda r: quantile_reference(r, 0.3, 0.1, 0.05)),
    "topk_sorted": (Op(soft_topk_sorted, 3, epsilon=0.05), lambda r: topk_sorted_reference(r, 3, 0.05)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OPS))
def test_matches_float64_reference(backend, rng, name, dtype):
    few_jax_compilations(backend, dtype == "float64" and name in ("sort", "rank_m3", "quantile", "topk_sorted"))
    op, ref = OPS[name]
    x = rng.normal(size=(3, 12)) * 2.0
    out = backend.to_numpy(op(backend.asarray(x, dtype)))
    expected = per_row(ref, x.astype(dtype).astype(np.float64))
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(out, expected, atol=TOL[dtype] * scale, rtol=0)


@pytest.mark.parametrize("name", ["sort", "rank", "topk_sorted"])
def test_newton_and_sinkhorn_agree(backend, rng, name):
    few_jax_compilations(backend, name == "rank")
    x = backend.asarray(rng.normal(size=(2, 20)), "float64")
    fn, args = {"sort": (soft_sort, ()), "rank": (soft_rank, ()), "topk_sorted": (soft_topk_sorted, (4,))}[name]
    newton = fn(x, *args, epsilon=0.02, method="newton")
    sinkhorn = fn(x, *args, epsilon=0.02, method="sinkhorn", tol=1e-13, max_iter=100_000)
    np.testing.assert_allclose(backend.to_numpy(newton), backend.to_numpy(sinkhorn), atol=1e-9)


@pytest.mark.parametrize("eps", [1.0, 1e-2, 1e-5])
def test_semidual_newton_matches_sinkhorn_and_marginals(backend, rng, eps):
    if backend.name == "jax":
        pytest.skip("eager lax.while_loop recompiles per call; JAX runs the solver through the operators")
    n, m = 60, 6
    cost = (rng.random((2, n, 1)) - np.linspace(0, 1, m)) ** 2
    b = rng.random(m) + 0.3
    b /= b.sum()
    xp = array_namespace(backend.asarray(cost, "float64"))
    C = backend.asarray(cost, "float64")
    la = backend.asarray(np.full((2, n), -np.log(n)), "float64")
    lb = backend.asarray(np.broadcast_to(np.log(b), (2, m)).copy(), "float64")
    r = semidual_newton(xp, C, la, lb, eps)
    plan = backend.to_numpy(plan_from_potentials(xp, C, la, lb, r.f, r.g, eps))
    assert bool(r.converged) and int(r.n_iter) <= 60
    np.testing.assert_allclose(plan.sum(-2), np.broadcast_to(b, (2, m)), atol=1e-13)
    np.testing.assert_allclose(plan.sum(-1), 1.0 / n, atol=1e-15)
    if eps >= 1e-2:  # Sinkhorn needs O(1/eps) iterations
        s = sinkhorn_log(xp, C, la, lb, eps, tol=1e-14, max_iter=100_000)
        ref = backend.to_numpy(plan_from_potentials(xp, C, la, lb, s.f, s.g, eps))
        np.testing.assert_allclose(plan, ref, atol=1e-12)


def test_hard_limits(backend, rng):
    few_jax_compilations(backend, False)
    # distinct, well-separated scores: as eps -> 0 sort, rank and sorted top-k become exact
    x = rng.permutation(12).astype(np.float64).reshape(2, 6) + rng.random((2, 6)) * 0.1
    xb = backend.asarray(x, "float64")
    np.testing.assert_allclose(backend.to_numpy(soft_sort(xb, epsilon=1e-5)), np.sort(x, -1), atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(soft_sort(xb, epsilon=1e-5, descending=True)), np.sort(x, -1)[:, ::-1], atol=1e-6)
    ranks = np.argsort(np.argsort(x, -1), -1) + 1.0
    np.testing.assert_allclose(backend.to_numpy(soft_rank(xb, epsilon=1e-5)), ranks, atol=1e-6)
    one_hot = (ranks[..., None] == (6 - np.arange(3.0))).astype(float)  # rank 1 = largest
    np.testing.assert_allclose(backend.to_numpy(soft_topk_sorted(xb, 3, epsilon=1e-4)), one_hot, atol=1e-9)
    bottom = (ranks[..., None] == 1 + np.arange(3.0)).astype(float)
    np.testing.assert_allclose(backend.to_numpy(soft_topk_sorted(xb, 3, epsilon=1e-4, largest=False)), bottom, atol=1e-9)
    # quantile: a weighted mean of the order statistics around q n
    big = np.arange(101.0)
    assert abs(float(backend.to_numpy(soft_quantile(backend.asarray(big, "float64"), 0.5, epsilon=1e-5))) - 50.0) < 1e-6


def test_topk_sorted_columns_sum_to_one_and_ranks_are_ordered(backend, rng):
    x = rng.normal(size=(4, 30))
    out = backend.to_numpy(soft_topk_sorted(backend.asarray(x, "float64"), 5, epsilon=0.1))
    assert out.shape == (4, 30, 5)
    np.testing.assert_allclose(out.sum(-2), 1.0, atol=1e-12)
    assert out.min() >= 0.0 and out.sum(-1).max() <= 1.0 + 1e-12
    expected_score = (out * x[..., None]).sum(-2)  # the soft r-th largest score decreases with r
    assert np.all(np.diff(expected_score, axis=-1) < 0)


def test_ranks_and_sort_are_consistent(backend, rng):
    few_jax_compilations(backend, False)
    x = rng.normal(size=(2, 15))
    xb = backend.asarray(x, "float64")
    ranks = backend.to_numpy(soft_rank(xb, epsilon=0.05))
    np.testing.assert_allclose(ranks.sum(-1), 15 * 16 / 2, rtol=1e-12)  # P has exact marginals
    np.testing.assert_allclose(backend.to_numpy(soft_sort(xb, epsilon=0.05)).sum(-1), x.sum(-1), rtol=1e-12)


GRAD_OPS = {
    "sort": Op(soft_sort, epsilon=0.05),
    "sort_desc_m3": Op(soft_sort, epsilon=0.1, m=3, descending=True),
    "rank": Op(soft_rank, epsilon=0.05),
    "quantiles": Op(soft_quantile, [0.3, 0.7], epsilon=0.05, width=0.1),
    "topk_sorted": Op(soft_topk_sorted, 2, epsilon=0.05),
    "topk_sorted_smallest_sinkhorn": Op(soft_topk_sorted, 2, epsilon=0.1, largest=False, method="sinkhorn", tol=1e-13),
}


@pytest.mark.parametrize("name", list(GRAD_OPS))
def test_gradient_matches_central_differences(backend, rng, name):
    few_jax_compilations(backend, name in ("rank", "quantiles", "topk_sorted", "topk_sorted_smallest_sinkhorn"))
    op = GRAD_OPS[name]
    x = rng.normal(size=(2, 5))
    out = backend.to_numpy(op(backend.asarray(x, "float64")))
    v = rng.normal(size=out.shape)
    _, grad = backend.value_and_grad(op, backend.asarray(x, "float64"), backend.asarray(v, "float64"))
    fd = central_difference(backend, op, x, v)
    np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=1e-6 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("axis", [0, -1])
def test_batched_axis_equals_loop(backend, rng, axis):
    few_jax_compilations(backend, axis == 0)
    x = rng.normal(size=(4, 5, 6))
    moved = np.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    ranks = backend.to_numpy(soft_rank(backend.asarray(x, "float64"), epsilon=0.05, axis=axis))
    expected = per_row(lambda r: rank_reference(r, 0.05, len(r)), rows)
    np.testing.assert_allclose(np.moveaxis(ranks, axis, -1).reshape(rows.shape), expected, atol=1e-9)
    top = backend.to_numpy(soft_topk_sorted(backend.asarray(x, "float64"), 2, epsilon=0.05, axis=axis))
    assert top.shape == (*x.shape, 2)
    looped = per_row(lambda r: topk_sorted_reference(r, 2, 0.05), rows)
    np.testing.assert_allclose(np.moveaxis(top, axis % 3, -2).reshape(looped.shape), looped, atol=1e-9)
    q = backend.to_numpy(soft_quantile(backend.asarray(x, "float64"), [0.25, 0.75], epsilon=0.05, axis=axis))
    assert q.shape == tuple(2 if i == axis % 3 else s for i, s in enumerate(x.shape))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_keeps_array_type_dtype_and_device(backend, rng, dtype):
    # the shape and parameters of the reference test, so JAX reuses its compilations (float32: see the tiny-eps test)
    few_jax_compilations(backend, dtype == "float64")
    x = backend.asarray(rng.normal(size=(3, 12)), dtype)
    for name, (op, _) in OPS.items():
        if backend.name == "jax" and name not in ("sort", "rank_m3", "quantile", "topk_sorted"):
            continue
        out = op(x)
        assert type(out) is type(x) and out.dtype == x.dtype and device(out) == device(x)
        assert array_namespace(out) is array_namespace(x)


def test_tiny_epsilon_float32_is_finite_and_converged(backend, rng):
    x = rng.normal(size=(2, 200)) * 5
    op = Op(soft_topk_sorted, 5, epsilon=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", softk.NotConvergedWarning)
        v = backend.asarray(rng.normal(size=(2, 200, 5)), "float32")
        out, grad = backend.value_and_grad(op, backend.asarray(x, "float32"), v)
    out, grad = backend.to_numpy(out), backend.to_numpy(grad)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    # float32 rounds (g_j - C_ij) / eps to ~ ulp / eps = 1e-3 relative: the plan's columns follow
    np.testing.assert_allclose(out.sum(-2), 1.0, atol=5e-3)


def test_sinkhorn_says_when_it_stops_early(backend, rng):
    x = backend.asarray(rng.normal(size=(2, 30)), "float64")
    with pytest.warns(softk.NotConvergedWarning, match="did not converge"):
        soft_rank(x, epsilon=1e-3, method="sinkhorn", max_iter=10)


def test_stays_on_a_non_default_device(rng):
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    x = xps.asarray(rng.normal(size=(2, 7)), device=dev)
    for fn, args, kw in [(soft_rank, (), {}), (soft_quantile, (0.5,), {}), (soft_topk_sorted, (1,), {"axis": 0})]:
        out, pullback = softk.vjp(fn, x, *args, epsilon=0.1, **kw)
        (grad,) = pullback(xps.ones(out.shape, dtype=x.dtype, device=dev))
        assert out.device == dev and grad.device == dev


def test_jax_jit_and_grad():
    jax = pytest.importorskip("jax")
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(3, 8)))
    loss = jax.jit(jax.grad(lambda z: (soft_rank(z, epsilon=0.05) ** 2).sum()))
    ref, pullback = softk.vjp(soft_rank, np.asarray(x), epsilon=0.05)
    np.testing.assert_allclose(np.asarray(loss(x)), pullback(2 * ref)[0], atol=1e-10)


BAD = [
    (lambda x: soft_topk_sorted(x, 6), ValueError, "k must satisfy"),
    (lambda x: soft_topk_sorted(x, 0), ValueError, "k must satisfy"),
    (lambda x: soft_sort(x, m=1), ValueError, "m must satisfy"),
    (lambda x: soft_rank(x, m=1), ValueError, "m must satisfy"),
    (lambda x: soft_quantile(x, 1.0), ValueError, "q must hold"),
    (lambda x: soft_quantile(x, [0.5, 0.2]), ValueError, "q must be strictly increasing"),
    (lambda x: soft_quantile(x, 0.5, width=0.9), ValueError, "width"),
    (lambda x: soft_sort(x, epsilon=0.0), ValueError, "epsilon"),
    (lambda x: soft_sort(x, method="lbfgs"), ValueError, "method"),
    (lambda x: soft_topk_sorted(x, 2, largest=1), TypeError, "largest"),
    (lambda x: soft_rank(x, axis=2), ValueError, "axis"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments_raise_naming_the_argument(backend, rng, case):
    call, error, match = BAD[case]
    with pytest.raises(error, match=match):
        call(backend.asarray(rng.normal(size=(2, 6)), "float64"))


def test_nan_and_integer_inputs_are_rejected(backend):
    bad = backend.asarray(np.array([1.0, np.nan, 2.0]), "float64")
    for fn, args in [(soft_sort, ()), (soft_rank, ()), (soft_quantile, (0.5,)), (soft_topk_sorted, (1,))]:
        with pytest.raises(ValueError, match="x contains NaN"):
            fn(bad, *args)
        with pytest.raises(TypeError, match="x must have a real floating dtype"):
            fn(backend.xp.asarray([3, 1, 2]), *args)


def test_constant_scores_share_everything(backend):
    few_jax_compilations(backend, False)
    x = backend.asarray(np.full((2, 5), 0.3), "float64")
    np.testing.assert_allclose(backend.to_numpy(soft_rank(x, epsilon=0.01)), 3.0, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(soft_sort(x, epsilon=0.01)), 0.3, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(soft_topk_sorted(x, 2, epsilon=0.01)), 0.2, atol=1e-12)


def test_float16_is_computed_in_float32(backend, rng):
    if backend.name not in ("numpy", "torch"):
        pytest.skip("float16 inputs: NumPy and PyTorch")
    x = rng.normal(size=(2, 8))
    for op, args in [(soft_rank, ()), (soft_topk_sorted, (2,))]:
        half = op(backend.asarray(x, "float16"), *args, epsilon=0.1)
        single = op(backend.asarray(x.astype(np.float16), "float32"), *args, epsilon=0.1)
        assert half.dtype == backend.dtype("float16")
        np.testing.assert_allclose(backend.to_numpy(half).astype(np.float32), backend.to_numpy(single), atol=5e-3)


# ---------------------------------------------------------------- many targets: kernel Sinkhorn from the sorted
# (unregularised) potentials, conjugate-gradient backward with matrix-vector products only


@pytest.mark.parametrize("name", ["rank", "sort"])
def test_many_targets_match_reference_and_differences(backend, rng, name):
    few_jax_compilations(backend, name == "rank")
    n = 140  # m = n > softk._ot.implicit.SCHUR_MAX: the CG backward
    fn, ref = {"rank": (soft_rank, rank_reference), "sort": (soft_sort, sort_reference)}[name]
    op = Op(fn, epsilon=0.05, tol=1e-12)
    x = rng.normal(size=(1, n))
    out = backend.to_numpy(op(backend.asarray(x, "float64")))
    np.testing.assert_allclose(out, per_row(lambda r: ref(r, 0.05, n), x), atol=1e-8 * max(1.0, np.abs(out).max()))
    v = rng.normal(size=out.shape)
    _, grad = backend.value_and_grad(op, backend.asarray(x, "float64"), backend.asarray(v, "float64"))
    fd = central_difference(backend, op, x, v)
    np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_many_targets_float32_is_converged_and_finite(backend, rng):
    few_jax_compilations(backend, False)
    x = rng.normal(size=(2, 200))
    op = Op(soft_rank, epsilon=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", softk.NotConvergedWarning)
        out, grad = backend.value_and_grad(op, backend.asarray(x, "float32"), backend.asarray(rng.normal(size=x.shape), "float32"))
    out, grad = backend.to_numpy(out), backend.to_numpy(grad)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    expected = per_row(lambda r: rank_reference(r, 1e-2, 200), x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(out, expected, atol=2e-3)  # ranks up to 200: ~1e-5 relative


def test_hard_potentials_are_the_sorting_duals(rng):
    from softk.sorting import hard_potentials

    for n, weights in [(7, [1 / 7] * 7), (9, [0.2, 0.3, 0.5]), (6, [1 / 6] * 3 + [0.5])]:
        s = rng.random((2, n))
        y = np.linspace(0.0, 1.0, len(weights))
        f, g = hard_potentials(np, s, y, weights)
        slack = (s[..., :, None] - y) ** 2 - f[..., :, None] - g[..., None, :]
        assert slack.min() > -1e-12  # dual feasible
        # complementary slackness on the monotone (north-west corner) plan
        for row, sl in zip(s, slack):
            order, cum = np.argsort(row), np.cumsum(weights)
            for r, i in enumerate(order):
                lo, hi = r / n, (r + 1) / n
                for jj in range(len(weights)):
                    start = cum[jj - 1] if jj else 0.0
                    if min(hi, cum[jj]) - max(lo, start) > 1e-12:
                        assert abs(sl[i, jj]) < 1e-12
        _, g_only = hard_potentials(np, s, y, weights, sources=False)
        np.testing.assert_allclose(g_only, g)
