"""Conformance of soft_topk on every backend: values, limits, solvers, batching, gradients, types."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from array_api_compat import array_namespace, device
from conftest import Op, central_difference
from reference import hard_topk_mask, soft_topk_reference

import softk

TOL = {"float64": 1e-10, "float32": 2e-5}
METHOD_KW = {"exact": {}, "sinkhorn": {"method": "sinkhorn", "tol": 1e-12}}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("largest", [True, False])
def test_matches_float64_reference(backend, rng, dtype, largest):
    x = rng.normal(size=(4, 50)) * 3.0
    for eps in (1.0, 0.1, 1e-2):
        out = backend.to_numpy(softk.soft_topk(backend.asarray(x, dtype), 7, epsilon=eps, largest=largest))
        ref = soft_topk_reference(x.astype(dtype), 7, eps, largest)
        np.testing.assert_allclose(out, ref, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k", [1, 12])
def test_long_rows_match_float64_reference(backend, rng, dtype, k):
    """Rows long enough (n >= 4 (k + 17)) that Newton starts from the root on the best k + 17 entries and a strided sample."""
    if backend.name == "jax" and k == 1:
        pytest.skip("JAX: each configuration costs a compilation; k = 12 covers it")
    x = rng.normal(size=(3, 3000))
    x[1] *= 30.0  # a wide row: the best entries alone decide the root
    x[2, :40] = x[2, 0]  # a tie across the threshold
    for eps in (1.0, 0.1, 1e-2, 1e-3, 1e-4):
        for largest in (True, False):
            out = backend.to_numpy(softk.soft_topk(backend.asarray(x, dtype), k, epsilon=eps, largest=largest))
            ref = soft_topk_reference(x.astype(dtype), k, eps, largest)
            # rounding of the scores is amplified by dA/ds <= 1 / (4 eps)
            atol = TOL[dtype] + float(np.finfo(dtype).eps) / eps
            np.testing.assert_allclose(out, ref, atol=atol, rtol=0, err_msg=f"eps={eps}, largest={largest}")
            np.testing.assert_allclose(out.sum(-1), k, rtol=0, atol=3000 * TOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sinkhorn_method_matches_reference(backend, rng, dtype):
    x = rng.normal(size=(3, 40))
    kw = {"method": "sinkhorn", "tol": 1e-12 if dtype == "float64" else 1e-6}
    out = backend.to_numpy(softk.soft_topk(backend.asarray(x, dtype), 5, epsilon=0.05, **kw))
    np.testing.assert_allclose(out, soft_topk_reference(x, 5, 0.05), atol=10 * TOL[dtype], rtol=0)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_sums_to_k_with_values_in_unit_interval(backend, rng, method):
    x = backend.asarray(rng.normal(size=(5, 33)), "float64")
    for k in (1, 4, 32):
        out = backend.to_numpy(softk.soft_topk(x, k, epsilon=0.05, **METHOD_KW[method]))
        np.testing.assert_allclose(out.sum(axis=-1), k, rtol=1e-12)
        assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("largest", [True, False])
def test_small_epsilon_recovers_hard_topk(backend, rng, largest):
    # neighbours 1/40 apart, M <= 4: the error is ~ exp(-gap / (M eps)) ~ exp(-60)
    x = rng.permutation(40).astype(np.float64).reshape(2, 20) / 40
    out = backend.to_numpy(softk.soft_topk(backend.asarray(x, "float64"), 6, epsilon=1e-4, largest=largest))
    np.testing.assert_allclose(out, hard_topk_mask(x, 6, largest), atol=1e-12)


def test_error_to_hard_mask_shrinks_with_epsilon(backend, rng):
    x = rng.normal(size=(64,))
    errs = [
        np.abs(backend.to_numpy(softk.soft_topk(backend.asarray(x, "float64"), 8, epsilon=e)) - hard_topk_mask(x, 8)).sum()
        for e in (1e-1, 1e-2, 1e-3, 1e-4)
    ]
    assert all(b < a for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-6


def test_largest_selects_the_largest(backend):
    x = backend.asarray(np.array([0.5, 10.0, -3.0, 7.0, 2.0]), "float64")
    top = backend.to_numpy(softk.soft_topk(x, 2, epsilon=1e-4))
    bottom = backend.to_numpy(softk.soft_topk(x, 2, epsilon=1e-4, largest=False))
    np.testing.assert_allclose(top, [0, 1, 0, 1, 0], atol=1e-9)
    np.testing.assert_allclose(bottom, [1, 0, 1, 0, 0], atol=1e-9)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_largest_is_smallest_of_negated_scores(backend, rng, method):
    x = rng.normal(size=(3, 25)) + 0.7
    a = softk.soft_topk(backend.asarray(x, "float64"), 4, epsilon=0.1, **METHOD_KW[method])
    b = softk.soft_topk(backend.asarray(-x, "float64"), 4, epsilon=0.1, largest=False, **METHOD_KW[method])
    np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), atol=1e-12)


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.03])
def test_exact_and_sinkhorn_agree(backend, rng, eps):
    x = backend.asarray(rng.normal(size=(2, 30)), "float64")
    exact = softk.soft_topk(x, 9, epsilon=eps)
    sinkhorn = softk.soft_topk(x, 9, epsilon=eps, method="sinkhorn", tol=1e-12, max_iter=100_000)
    np.testing.assert_allclose(backend.to_numpy(exact), backend.to_numpy(sinkhorn), atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_batched_axis_equals_loop(backend, rng, axis):
    x = rng.normal(size=(3, 8, 5))
    out = backend.to_numpy(softk.soft_topk(backend.asarray(x, "float64"), 2, epsilon=0.1, axis=axis))
    moved = np.moveaxis(x, axis, -1)
    looped = np.stack([soft_topk_reference(row, 2, 0.1) for row in moved.reshape(-1, moved.shape[-1])])
    np.testing.assert_allclose(np.moveaxis(out, axis, -1).reshape(looped.shape), looped, atol=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_keeps_array_type_dtype_and_device(backend, rng, dtype):
    x = backend.asarray(rng.normal(size=(2, 6)), dtype)
    out = softk.soft_topk(x, 3)
    assert type(out) is type(x)
    assert out.dtype == x.dtype
    assert device(out) == device(x)
    assert array_namespace(out) is array_namespace(x)


@pytest.mark.parametrize(("method", "eps"), [("exact", 1.0), ("exact", 0.1), ("exact", 0.02), ("sinkhorn", 0.1)])
@pytest.mark.parametrize("largest", [True, False])
def test_gradient_matches_central_differences(backend, rng, method, largest, eps):
    x = rng.normal(size=(2, 6)) + (0.4 if largest else -0.3)
    v = rng.normal(size=x.shape)
    op = Op(softk.soft_topk, 3, epsilon=eps, largest=largest, **METHOD_KW[method])
    _, grad = backend.value_and_grad(op, backend.asarray(x, "float64"), backend.asarray(v, "float64"))
    fd = central_difference(backend, op, x, v)
    np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=2e-6 * max(1.0, np.abs(fd).max()))


def test_gradient_flows_to_the_normalising_extreme(backend):
    # The max-normalisation is differentiated: the extreme score gets a gradient too.
    x = np.array([0.1, 0.3, 0.2, 5.0, 0.25])
    v = np.array([1.0, -1.0, 0.5, 0.0, 0.0])
    _, grad = backend.value_and_grad(Op(softk.soft_topk, 2, epsilon=0.05), backend.asarray(x, "float64"), backend.asarray(v, "float64"))
    assert abs(backend.to_numpy(grad)[3]) > 1e-6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_tiny_epsilon_stays_finite(backend, rng, dtype, method):
    # Sinkhorn needs O(1/eps) iterations: at eps = 1e-4 it stops at max_iter (and says so),
    # but its columns are exact after each g-update, so sum(A) = k and nothing overflows.
    x = rng.normal(size=(3, 200)) * 10
    kw = {"method": "sinkhorn", "max_iter": 200} if method == "sinkhorn" else {}
    op = Op(softk.soft_topk, 10, epsilon=1e-4, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if method == "sinkhorn" else "error", softk.NotConvergedWarning)
        out, grad = backend.value_and_grad(op, backend.asarray(x, dtype), backend.asarray(rng.normal(size=x.shape), dtype))
    out, grad = backend.to_numpy(out), backend.to_numpy(grad)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    # float32 Sinkhorn potentials carry ~1e-7 relative error, amplified by 1/eps in the plan
    np.testing.assert_allclose(out.sum(-1), 10, rtol=1e-5 if method == "exact" else 2e-3)


def test_agrees_across_backends_in_float32(backend, rng):
    x = rng.normal(size=(4, 1000)).astype(np.float32)
    ref = softk.soft_topk(x.astype(np.float64), 10, epsilon=1e-2)
    out = backend.to_numpy(softk.soft_topk(backend.asarray(x, "float32"), 10, epsilon=1e-2))
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_ties_share_the_mass(backend):
    x = backend.asarray(np.array([1.0, 3.0, 3.0, 0.0]), "float64")
    out = backend.to_numpy(softk.soft_topk(x, 1, epsilon=1e-3))
    np.testing.assert_allclose(out, [0, 0.5, 0.5, 0], atol=1e-12)


def test_constant_scores_give_uniform_indicator(backend):
    x = backend.asarray(np.full((2, 8), 0.5), "float64")
    np.testing.assert_allclose(backend.to_numpy(softk.soft_topk(x, 3, epsilon=0.1)), 3 / 8, atol=1e-12)


def test_sinkhorn_says_when_it_stops_early(backend, rng):
    x = backend.asarray(rng.normal(size=(2, 30)), "float64")
    with pytest.warns(softk.NotConvergedWarning, match="did not converge"):
        out = softk.soft_topk(x, 5, epsilon=1e-3, method="sinkhorn", max_iter=20)
    np.testing.assert_allclose(backend.to_numpy(out).sum(-1), 5, rtol=1e-12)


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_stays_on_a_non_default_device(rng, method):
    # array-api-strict's fake device: any array created on the default device inside the
    # computation would meet the input's and raise.
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    x = xps.asarray(rng.normal(size=(2, 9)), device=dev)
    out, pullback = softk.vjp(softk.soft_topk, x, 1, epsilon=0.1, method=method, axis=0 if method == "exact" else -1, **({} if method == "exact" else {"tol": 1e-9}))
    (grad,) = pullback(xps.ones(x.shape, dtype=x.dtype, device=dev))
    assert out.device == dev and grad.device == dev
