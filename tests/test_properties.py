"""Property-based checks (hypothesis) over shapes, k, epsilon and score scales, against the float64 reference."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import soft_topk_reference

import softk


@st.composite
def problems(draw):
    n = draw(st.integers(2, 40))
    batch = draw(st.integers(1, 3))
    k = draw(st.integers(1, n - 1))
    eps = draw(st.floats(1e-3, 10.0))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 0.5, -20.0, 1e3]))
    seed = draw(st.integers(0, 2**31 - 1))
    x = offset + scale * np.random.default_rng(seed).normal(size=(batch, n))
    return x, k, eps, draw(st.booleans())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(problems())
def test_matches_reference_sums_to_k_and_is_monotone(problem):
    x, k, eps, largest = problem
    out = softk.soft_topk(x, k, epsilon=eps, largest=largest)
    np.testing.assert_allclose(out, soft_topk_reference(x, k, eps, largest), atol=1e-9)
    np.testing.assert_allclose(out.sum(-1), k, rtol=1e-12)
    assert (out >= 0).all() and (out <= 1).all()
    # larger scores never get a smaller share (smaller ones, for largest=False)
    order = np.argsort(x if largest else -x, axis=-1)
    assert (np.diff(np.take_along_axis(out, order, -1), axis=-1) >= -1e-12).all()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(problems())
def test_gradient_is_orthogonal_to_constant_cotangent_and_matches_a_directional_difference(problem):
    x, k, eps, largest = problem
    out, pullback = softk.vjp(softk.soft_topk, x, k, epsilon=eps, largest=largest)
    # sum(A) = k for every x, so a constant cotangent has zero gradient
    (g_const,) = pullback(np.ones_like(x))
    v = np.random.default_rng(0).normal(size=x.shape)
    (g,) = pullback(v)
    assert np.isfinite(g).all()
    scale = np.abs(x).max() + 1.0
    assert np.abs(g_const).max() <= 1e-8 * max(1.0, np.abs(g).max())
    d = np.random.default_rng(1).normal(size=x.shape)
    h = 1e-6 * scale
    # M = max_i max(y_i^2, (y_i - 1)^2) has a kink where its two largest terms tie: keep the
    # difference away from it (the derivative there is one-sided, as for any max)
    y = -x if largest else x
    spread = np.sort(np.abs(y - 0.5), axis=-1)
    assume(bool((spread[:, -1] - spread[:, -2] > 1e3 * h * np.abs(d).sum()).all()))

    def central(h: float) -> float:
        up, down = (softk.soft_topk(x + s * h * d, k, epsilon=eps, largest=largest) for s in (1.0, -1.0))
        return ((up - down) * v).sum() / (2 * h)

    # Richardson: the O(h^2) error of one central difference is large where the
    # indicator is steep (scores packed within ~eps of each other)
    fd = (4.0 * central(h / 2) - central(h)) / 3.0
    assert abs((g * d).sum() - fd) <= 1e-5 * max(1.0, abs(fd))
