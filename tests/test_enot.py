"""ENOT (softk.enot): the expectile and ENOT losses, the Gaussian helpers, the PyTorch and JAX trainers."""

from __future__ import annotations

import numpy as np
import pytest

from softk import enot
from softk.enot_conjugate import conjugate_gradient_steps, conjugate_lbfgs
from softk.gaussian_ot import gaussian_map, gaussian_w2, l2_uvp


def gaussian_pair(d, seed):
    """Two Gaussians with random means and covariances ``Q diag(exp(U(-1, 1))) Q^T``, and samplers."""
    r = np.random.default_rng(seed)

    def cov():
        q, _ = np.linalg.qr(r.normal(size=(d, d)))
        return (q * np.exp(r.uniform(-1, 1, d))) @ q.T

    m0, c0, m1, c1 = r.normal(size=d), cov(), r.normal(size=d), cov()
    l0, l1 = np.linalg.cholesky(c0), np.linalg.cholesky(c1)
    sample_x = lambda g, n: m0 + g.normal(size=(n, d)) @ l0.T  # noqa: E731
    sample_y = lambda g, n: m1 + g.normal(size=(n, d)) @ l1.T  # noqa: E731
    return (m0, c0, m1, c1), sample_x, sample_y


SMALL = dict(hidden=(16, 16), batch_size=64, lr=3e-3, lr_schedule="cosine", seed=0)


def test_expectile_loss_matches_definition(backend, rng):
    u = rng.normal(size=50)
    for tau in (0.01, 0.5, 0.99):
        want = np.array([tau * v * v if v >= 0 else (1 - tau) * v * v for v in u])
        got = backend.to_numpy(enot.expectile_loss(backend.asarray(u, "float64"), tau))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_expectile_loss_gradient_is_the_asymmetric_slope(framework, rng):
    u = rng.normal(size=20)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        t = torch.asarray(u, requires_grad=True)
        enot.expectile_loss(t, 0.9).sum().backward()
        grad = t.grad.numpy()
    else:
        jax = pytest.importorskip("jax")
        grad = np.asarray(jax.grad(lambda v: enot.expectile_loss(v, 0.9).sum())(jax.numpy.asarray(u)))
    np.testing.assert_allclose(grad, np.where(u >= 0, 1.8 * u, 0.2 * u), rtol=1e-12)


def _dual_loss_by_hand(g_y, g_t, c_xt, c_xy, tau, lam):
    g_c = c_xt - g_t
    ell = lambda u: np.where(u >= 0, tau, 1 - tau) * u * u  # noqa: E731
    return -(g_y.mean() + g_c.mean()) + lam * (ell(g_c - c_xy + g_y).mean() + ell(g_y - c_xy + g_c).mean())


def test_dual_loss_value_and_stop_gradient(backend, rng):
    g_y, g_t, c_xt, c_xy = (rng.normal(size=16) for _ in range(4))
    arr = lambda v: backend.asarray(v, "float64")  # noqa: E731
    got = enot.dual_loss(arr(g_y), arr(g_t), arr(c_xt), arr(c_xy), tau=0.8, expectile_weight=0.7)
    assert float(got) == pytest.approx(_dual_loss_by_hand(g_y, g_t, c_xt, c_xy, 0.8, 0.7), rel=1e-12)
    assert float(enot.map_loss(arr(c_xt), arr(g_t))) == pytest.approx((c_xt - g_t).mean(), rel=1e-12)
    halved = enot.dual_loss(arr(g_y), arr(g_t), arr(c_xt), arr(c_xy), tau=0.8, expectile_weight=0.7, scale=2.0)
    assert float(halved) == pytest.approx(_dual_loss_by_hand(g_y, g_t, c_xt, c_xy, 0.8, 0.35), rel=1e-12)
    if backend.name not in ("torch", "jax"):
        return
    # d/d g(y): -1/n from the dual term, and only the first expectile term (the second sees g(y) through sg)
    _, grad = backend.value_and_grad(
        lambda gy: enot.dual_loss(gy, arr(g_t), arr(c_xt), arr(c_xy), tau=0.8, expectile_weight=0.7),
        arr(g_y), arr(np.array(1.0)))
    u = c_xt - g_t - c_xy + g_y
    want = (-1 + 0.7 * np.where(u >= 0, 0.8, 0.2) * 2 * u) / 16
    np.testing.assert_allclose(backend.to_numpy(grad), want, rtol=1e-10)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_power_cost_twist_inverts_the_gradient_of_h(p, rng):
    x, w = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    cost = enot.PowerCost(p)
    z = x - cost.twist(x, w)  # grad h(z) = |z|^(p-2) z must give back w
    np.testing.assert_allclose(np.linalg.norm(z, axis=1, keepdims=True) ** (p - 2) * z, w, rtol=1e-10)
    np.testing.assert_allclose(cost(x, x - z), np.linalg.norm(z, axis=1) ** p / p, rtol=1e-12)


def test_gaussian_map_pushes_forward_and_w2_matches_1d(rng):
    (m0, c0, m1, c1), _, _ = gaussian_pair(4, 1)
    a, b = gaussian_map(m0, c0, m1, c1)
    np.testing.assert_allclose(a, a.T, atol=1e-12)
    np.testing.assert_allclose(a @ c0 @ a, c1, atol=1e-10)  # Cov(T*(x)) = A S0 A = S1
    np.testing.assert_allclose(m0 @ a + b, m1, atol=1e-12)
    assert np.linalg.eigvalsh(a).min() > 0
    w2 = gaussian_w2(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[9.0]]))
    assert float(w2) == pytest.approx(4.0 + 1.0)
    t = rng.normal(size=(100, 3))
    assert float(l2_uvp(t, t)) == 0.0


def test_gaussian_helpers_on_every_backend(backend):
    (m0, c0, m1, c1), _, _ = gaussian_pair(3, 2)
    arrays = [backend.asarray(v, "float64") for v in (m0, c0, m1, c1)]
    a, b = gaussian_map(*arrays)
    want_a, want_b = gaussian_map(m0, c0, m1, c1)
    np.testing.assert_allclose(backend.to_numpy(a), want_a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(b), want_b, rtol=1e-10, atol=1e-12)
    assert float(gaussian_w2(*arrays)) == pytest.approx(float(gaussian_w2(m0, c0, m1, c1)), rel=1e-10)


@pytest.mark.parametrize("framework", ["torch"])  # JAX: the same numbers (test_torch_and_jax_... below)
def test_trainer_learns_a_2d_gaussian_map(framework):
    pytest.importorskip(framework)
    (m0, c0, m1, c1), sx, sy = gaussian_pair(2, 0)
    trainer = enot.ENOT(2, framework=framework, **SMALL)
    trainer.fit(sx, sy, 200, progress=False)
    x = sx(np.random.default_rng(1), 2000)
    a, b = gaussian_map(m0, c0, m1, c1)
    uvp = float(l2_uvp(np.asarray(trainer.transport(x)), x @ a + b))
    assert uvp < 5.0
    primal, dual = trainer.cost_estimate(x, sy(np.random.default_rng(2), 2000))
    w2_half = float(gaussian_w2(m0, c0, m1, c1)) / 2  # the cost is |x - y|^2 / 2
    # the dual is second-order accurate in the map's error, the primal first-order
    assert dual == pytest.approx(w2_half, rel=0.05) and primal == pytest.approx(w2_half, rel=0.25)


def test_torch_and_jax_losses_agree_for_identical_parameters_and_batches(rng):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    x, y = rng.normal(size=(64, 3)), rng.normal(size=(64, 3)) + 1.0
    baseline = dict(expectile_weight=0.0, conjugate="lbfgs", conjugate_steps=3, amortization="regression",
                    cost=enot.PowerCost(1.5))
    for options in (dict(tau=0.7), baseline):
        kw = dict(hidden=(8,), batch_size=64, dtype="float64", seed=3, **options)
        tt, tj = enot.ENOT(3, framework="torch", **kw), enot.ENOT(3, framework="jax", **kw)
        params = {k: [v + 0.1 * rng.normal(size=v.shape) for v in vs] for k, vs in tt.get_params().items()}
        tt.set_params(params)
        tj.set_params(params)
        np.testing.assert_allclose(tt.losses(x, y), tj.losses(x, y), rtol=1e-10)
        if options is baseline:
            continue
        # the same seeded batches and Adam: the parameters stay together over a few steps
        tt.fit(lambda g, n: g.normal(size=(n, 3)), y, 3, progress=False)
        tj.fit(lambda g, n: g.normal(size=(n, 3)), y, 3, progress=False)
        np.testing.assert_allclose(np.asarray(tt.transport(x)), np.asarray(tj.transport(x)), rtol=1e-8)
        for a, b in zip(tt.get_params()["f"] + tt.get_params()["g"], tj.get_params()["f"] + tj.get_params()["g"]):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_seeded_runs_are_reproducible_and_other_costs_learn_a_shift():
    pytest.importorskip("torch")
    shift = np.array([1.0, -0.5])
    sx, sy = (lambda g, n: g.normal(size=(n, 2))), (lambda g, n: g.normal(size=(n, 2)) + shift)  # noqa: E731
    runs = [enot.ENOT(2, framework="torch", **SMALL).fit(sx, sy, 20, progress=False) for _ in range(2)]
    assert runs[0] == runs[1]
    trainer = enot.ENOT(2, framework="torch", cost=enot.PowerCost(1.5), standardize=False, **SMALL)
    trainer.fit(sx, sy, 300, progress=False)
    x = sx(np.random.default_rng(1), 500)  # a translation is optimal for every strictly convex h(x - y)
    error = np.abs(trainer.transport(x).numpy() - x - shift).mean()
    assert error < 0.25, error  # the identity map is 0.75 off; 0.15 measured


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_bad_input_gives_clear_errors(framework):
    pytest.importorskip(framework)
    good = lambda g, n: g.normal(size=(n, 2))  # noqa: E731
    for tau in (0.0, 1.0, -0.5, 2):
        with pytest.raises(ValueError, match="tau"):
            enot.ENOT(2, framework=framework, tau=tau)
    with pytest.raises(ValueError, match="framework"):
        enot.ENOT(2, framework="tensorflow")
    with pytest.raises(ValueError, match="lr_schedule"):
        enot.ENOT(2, framework=framework, lr_schedule="linear")
    with pytest.raises(ValueError, match="conjugate"):
        enot.ENOT(2, framework=framework, conjugate="newton")
    with pytest.raises(ValueError, match="amortization='regression'.*needs conjugate"):
        enot.ENOT(2, framework=framework, amortization="regression")
    with pytest.raises(ValueError, match="conjugate_gtol"):
        enot.ENOT(2, framework=framework, conjugate="lbfgs", conjugate_gtol=0.0)
    with pytest.raises(ValueError, match="cost power"):
        enot.PowerCost(1.0)
    trainer = enot.ENOT(2, framework=framework, hidden=(4,), batch_size=8)
    with pytest.raises(ValueError, match=r"sampler_y must return an array of shape \(\d+, 2\)"):
        trainer.fit(good, lambda g, n: g.normal(size=(n, 3)), 2, progress=False)
    with pytest.raises(TypeError, match="sampler_x must return a real floating array"):
        trainer.fit(lambda g, n: np.ones((n, 2), dtype=np.int64), good, 2, progress=False)
    with pytest.raises(ValueError, match="sampler_x returned a batch with NaN"):
        trainer.fit(lambda g, n: np.full((n, 2), np.nan), good, 2, progress=False)
    with pytest.raises(TypeError, match="sampler_y must be a callable"):
        trainer.fit(good, "data", 2, progress=False)
    raw = enot.ENOT(2, framework=framework, hidden=(4,), batch_size=8, standardize=False, bidirectional=False)
    with pytest.raises(FloatingPointError, match="diverged at step"):  # |y|^2 overflows float32
        raw.fit(good, lambda g, n: np.full((n, 2), 1e30), 20, progress=False)


def test_array_samplers_and_progress_line(capsys):
    pytest.importorskip("torch")
    data = np.random.default_rng(0).normal(size=(50, 2))
    trainer = enot.ENOT(2, framework="torch", hidden=(4,), batch_size=8, check_every=1)
    history = trainer.fit(data, data + 1.0, 3, progress=True)
    assert [h[0] for h in history] == [1, 2, 3]
    assert "3/3" in capsys.readouterr().err  # a tqdm bar, or the plain line without tqdm
    assert [h[0] for h in trainer.fit(data, data, 2, progress=False)] == [4, 5]


def _conjugate_problem(xp, n):
    """Row ``i``: ``sum_k a_k (y_k - b_ik)^2 / 2 + w cos(y_k)`` (``w < min a``: strictly convex), and its gradient."""
    a = xp.asarray([1.0, 4.0, 20.0], dtype=xp.float64)
    b = xp.reshape(xp.asarray([0.1 * i for i in range(3 * n)], dtype=xp.float64), (n, 3))

    def fun(y):
        return xp.sum(0.5 * a * (y - b) ** 2 + 0.5 * xp.cos(y), axis=-1), a * (y - b) - 0.5 * xp.sin(y)

    return fun, b


def test_conjugate_lbfgs_reaches_gtol_on_every_backend(backend):
    if backend.name == "jax":
        pytest.skip("JAX runs it inside the jitted trainer in test_torch_and_jax_losses_agree_...")
    xp = backend.xp
    fun, b = _conjugate_problem(xp, 6)
    out = conjugate_lbfgs(fun, xp.zeros((6, 3), dtype=xp.float64), max_iter=50, gtol=1e-9)
    assert float(out.grad_norm) <= 1e-9 and 1 < int(out.iterations) < 50
    assert int(out.evaluations) >= int(out.iterations) + 1
    grad = backend.to_numpy(fun(out.y)[1])
    assert np.abs(grad).max() <= 1e-9
    # gradient descent with a fixed step 1/20 (the largest curvature) only creeps along the flat axis
    slow = conjugate_gradient_steps(fun, xp.zeros((6, 3), dtype=xp.float64), steps=int(out.iterations), lr=0.05)
    assert np.abs(backend.to_numpy(fun(slow)[1])).max() > 1e-3
    capped = conjugate_lbfgs(fun, xp.zeros((6, 3), dtype=xp.float64), max_iter=2, gtol=1e-9)
    assert int(capped.iterations) == 2 and float(capped.grad_norm) > 1e-9


def test_conjugate_lbfgs_row_without_descent_stalls_instead_of_looping():
    # row 1 is NaN from the start: no step is acceptable there, so it stops while row 0 converges
    fun, _ = _conjugate_problem(np, 2)
    y0 = np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]])
    out = conjugate_lbfgs(fun, y0, max_iter=30, gtol=1e-9)
    assert int(out.iterations) < 30 and np.abs(fun(out.y)[1][0]).max() <= 1e-9
    assert int(out.evaluations) < 3 * int(out.iterations)  # the NaN row does not hold up the line search


def test_regression_loss_and_w2ot_baseline_learns_a_2d_gaussian_map():
    assert float(enot.regression_loss(np.array([[1.0, 1.0]]), np.array([[0.0, 3.0]]))) == pytest.approx(2.5)
    pytest.importorskip("torch")
    (m0, c0, m1, c1), sx, sy = gaussian_pair(2, 0)
    trainer = enot.ENOT(2, framework="torch", expectile_weight=0.0, conjugate="lbfgs", amortization="regression",
                        conjugate_steps=10, conjugate_gtol=1e-4, bidirectional=False, **SMALL)
    trainer.fit(sx, sy, 150, progress=False)
    iterations, evaluations = (int(v) for v in trainer.last_conjugate)
    assert 1 <= iterations <= 10 and evaluations > iterations
    x = sx(np.random.default_rng(1), 2000)
    a, b = gaussian_map(m0, c0, m1, c1)
    assert float(l2_uvp(trainer.transport(x).numpy(), x @ a + b)) < 5.0
    cheap = enot.ENOT(2, framework="torch", expectile_weight=0.0, conjugate="gradient", conjugate_steps=2, **SMALL)
    (_, dual, mapl), = cheap.fit(sx, sy, 10, progress=False)
    assert np.isfinite([dual, mapl]).all() and cheap.last_conjugate is None  # no L-BFGS counts to report


def test_cost_scale_is_shift_free_and_scales_with_the_cost(rng):
    x, y = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    cost = enot.PowerCost(2.0)
    base = float(enot.cost_scale(cost, x, y))
    assert float(enot.cost_scale(cost, x + 5.0, y - 2.0)) == pytest.approx(base, rel=1e-12)
    assert float(enot.cost_scale(cost, 3.0 * x, 3.0 * y)) == pytest.approx(9.0 * base, rel=1e-12)
    assert base == pytest.approx(3.0, rel=0.2)  # E |x - y|^2 / 2 = dim for independent standard normals
