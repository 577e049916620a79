"""Bad input gets a ValueError/TypeError naming the argument, never a silent NaN or a hang."""

from __future__ import annotations

import numpy as np
import pytest

import softk
from softk._validate import namespace_of

X = np.array([[0.3, -1.0, 2.0, 0.5], [1.0, 2.0, 3.0, 4.0]])


@pytest.mark.parametrize("k", [0, -1, 4, 5])
def test_k_out_of_range(backend, k):
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= 3"):
        softk.soft_topk(backend.asarray(X, "float64"), k)


@pytest.mark.parametrize("k", [2.0, 2.5, "2", True, None])
def test_k_not_an_integer(k):
    with pytest.raises(TypeError, match="k must be an integer"):
        softk.soft_topk(X, k)


def test_k_accepts_numpy_integers():
    np.testing.assert_allclose(softk.soft_topk(X, np.int64(2)).sum(-1), 2)


@pytest.mark.parametrize("eps", [0.0, -0.1, float("inf"), float("nan")])
def test_epsilon_not_positive_and_finite(backend, eps):
    with pytest.raises(ValueError, match="epsilon must be finite and > 0"):
        softk.soft_topk(backend.asarray(X, "float64"), 2, epsilon=eps)


@pytest.mark.parametrize("eps", ["0.1", None, [0.1], 1j])
def test_epsilon_not_a_number(eps):
    with pytest.raises(TypeError, match="epsilon"):
        softk.soft_topk(X, 2, epsilon=eps)


def test_nan_scores(backend):
    x = X.copy()
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        softk.soft_topk(backend.asarray(x, "float64"), 2)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_scores_are_rejected_with_advice(backend, value):
    x = X.copy()
    x[0, 1] = value
    with pytest.raises(ValueError, match=r"x contains \+-inf.*mask"):
        softk.soft_topk(backend.asarray(x, "float64"), 2)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_and_boolean_dtypes(backend, dtype):
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        softk.soft_topk(backend.asarray(X > 0 if dtype == "bool" else X, dtype), 2)


def test_not_an_array():
    with pytest.raises(TypeError, match="x must be an array"):
        softk.soft_topk([1.0, 2.0, 3.0], 1)


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range(backend, axis):
    with pytest.raises(ValueError, match=f"axis {axis} is out of range"):
        softk.soft_topk(backend.asarray(X, "float64"), 1, axis=axis)


def test_axis_not_an_integer():
    with pytest.raises(TypeError, match="axis must be an integer"):
        softk.soft_topk(X, 1, axis=1.0)


def test_zero_dim_and_too_short(backend):
    with pytest.raises(ValueError, match="at least one dimension"):
        softk.soft_topk(backend.asarray(np.array(1.0), "float64"), 1)
    with pytest.raises(ValueError, match="at least 2 entries"):
        softk.soft_topk(backend.asarray(np.ones((3, 1)), "float64"), 1)


def test_method_and_flags():
    with pytest.raises(ValueError, match="method must be one of"):
        softk.soft_topk(X, 2, method="sort")
    with pytest.raises(TypeError, match="largest must be a bool"):
        softk.soft_topk(X, 2, largest=1)
    with pytest.raises(ValueError, match="tol must be finite and > 0"):
        softk.soft_topk(X, 2, method="sinkhorn", tol=0.0)
    with pytest.raises(ValueError, match="max_iter must satisfy"):
        softk.soft_topk(X, 2, method="sinkhorn", max_iter=0)


def test_arrays_from_two_frameworks():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="b is a torch array but a is a numpy array"):
        namespace_of(a=X, b=torch.asarray(X))
    out, pullback = softk.vjp(softk.soft_topk, X, 2)
    with pytest.raises(ValueError, match="cotangent must be"):
        pullback(torch.ones(2, 4, dtype=torch.float64))


def test_arrays_on_two_devices():
    xps = pytest.importorskip("array_api_strict")
    a = xps.asarray(X)
    b = xps.asarray(X, device=xps.Device("device1"))
    with pytest.raises(ValueError, match="b is on device .* but a is on"):
        namespace_of(a=a, b=b)


def test_vjp_needs_a_softk_operator():
    with pytest.raises(TypeError, match="softk operator"):
        softk.vjp(np.sort, X)
