"""Conformance of the public entropic-OT solver (softk.ot) on every backend.

Values against POT and a float64 NumPy reference; marginals; gradients of the
value and of the plan against central differences; batching; warm starts;
honest non-convergence; bad input.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from array_api_compat import array_namespace, device
from reference import sinkhorn_reference

import softk
import softk._ot.blocks
import softk._ot.costs
import softk._ot.kernel
import softk.ot
from softk import ot as sot
from softk._ot.dense import sinkhorn_log
from softk._ot.implicit import plan_vjp
from softk._ot.plan import plan_from_potentials

ARRAYS = ("cost", "x", "y", "a", "b")


def problem(rng, n=7, m=5, d=2, batch=()):
    x = rng.normal(size=(*batch, n, d))
    y = rng.normal(size=(*batch, m, d)) + 0.3
    a = rng.uniform(0.5, 1.5, size=(*batch, n))
    b = rng.uniform(0.5, 1.5, size=(*batch, m))
    cost = ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    return dict(x=x, y=y, a=a, b=b, cost=cost)


def run(backend, what, data, dtype="float64", cot=None, **params):
    """``(value, grads)`` of ``sinkhorn(**data, **params).<what>`` with the backend's own autograd."""
    names = [k for k in ARRAYS if k in data]
    arrays = {k: backend.asarray(data[k], dtype) for k in names}
    if cot is None:
        return getattr(sot.sinkhorn(**arrays, **params), what), None
    cot = backend.asarray(cot, dtype)
    if backend.name == "torch":
        import torch

        leaves = {k: v.clone().requires_grad_(True) for k, v in arrays.items()}
        out = getattr(sot.sinkhorn(**leaves, **params), what)
        grads = torch.autograd.grad(out, [leaves[k] for k in names], cot)
        return out.detach(), dict(zip(names, grads))
    if backend.name == "jax":
        import jax

        out, pullback = jax.vjp(lambda *v: getattr(sot.sinkhorn(**dict(zip(names, v)), **params), what), *arrays.values())
        return out, dict(zip(names, pullback(cot)))
    fn = sot.sinkhorn_cost if what == "cost" else sot.sinkhorn_plan
    out, pullback = softk.vjp(fn, arrays.pop("cost", None), **arrays, **params)
    return out, dict(zip(names, pullback(cot)))


def numpy_value(data, what, **params):
    return np.asarray(getattr(sot.sinkhorn(**data, **params), what))


_FD_CACHE: dict = {}


def central_differences(data, what, cot, wrt, h=1e-6, **params):
    key = (what, wrt, tuple(sorted(data)), cot.tobytes())
    if key not in _FD_CACHE:  # the same NumPy differences serve every backend
        _FD_CACHE[key] = _central_differences(data, what, cot, wrt, h, **params)
    return _FD_CACHE[key]


def _central_differences(data, what, cot, wrt, h, **params):
    grad = np.zeros_like(data[wrt])
    for idx in np.ndindex(grad.shape):
        plus, minus = dict(data), dict(data)
        plus[wrt] = data[wrt].copy()
        minus[wrt] = data[wrt].copy()
        plus[wrt][idx] += h
        minus[wrt][idx] -= h
        diff = numpy_value(plus, what, **params) - numpy_value(minus, what, **params)
        grad[idx] = (diff * cot).sum() / (2 * h)
    return grad


@functools.cache
def pot_plan(eps):
    """POT's log-domain plan for ``problem(default_rng(0), 30, 20)``, run to convergence (computed once)."""
    ot = pytest.importorskip("ot")
    data = problem(np.random.default_rng(0), 30, 20)
    a, b = data["a"], data["b"]
    return ot.sinkhorn(a / a.sum(), b / b.sum(), data["cost"], eps, method="sinkhorn_log", stopThr=1e-12, numItermax=200_000)


@pytest.mark.parametrize("eps", [0.5, 0.05, 0.01])
def test_matches_pot_sinkhorn_log(backend, rng, eps):
    data = problem(rng, 30, 20)
    ref = pot_plan(eps)
    out = sot.sinkhorn(**{k: backend.asarray(data[k], "float64") for k in ("cost", "a", "b")}, epsilon=eps, tol=1e-11, max_iter=10**6)
    np.testing.assert_allclose(backend.to_numpy(out.plan), ref, atol=1e-9, rtol=0)
    a, b = data["a"] / data["a"].sum(), data["b"] / data["b"].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(ref > 0, ref * np.log(ref / np.outer(a, b)), 0.0).sum()
    np.testing.assert_allclose(float(backend.to_numpy(out.cost)), (ref * data["cost"]).sum() + eps * kl, rtol=1e-8)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_float64_kernel_reference(backend, rng, dtype):
    data = problem(rng, 12, 9)
    cost = data["cost"] / data["cost"].max()
    a, b = np.full(12, 1 / 12), np.full(9, 1 / 9)
    ref = sinkhorn_reference(cost, a, b, 0.05)
    tol = 1e-12 if dtype == "float64" else 1e-5
    out = sot.sinkhorn(backend.asarray(cost, dtype), epsilon=0.05, tol=tol)
    assert bool(out.converged)
    np.testing.assert_allclose(backend.to_numpy(out.plan), ref, atol=1e-12 if dtype == "float64" else 1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3, 1e-4])
def test_marginals_within_tol_down_to_small_epsilon(backend, rng, dtype, eps):
    x, y = rng.random((150, 2)), rng.random((120, 2))
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    cost /= cost.max()
    tol = 1e-6 if dtype == "float64" else 1e-4
    out = sot.sinkhorn(backend.asarray(cost, dtype), epsilon=eps, tol=tol, max_iter=100_000)
    plan = backend.to_numpy(out.plan).astype(np.float64)
    assert np.isfinite(plan).all() and bool(out.converged)
    assert np.abs(plan.sum(1) - 1 / 150).sum() <= 1.01 * tol
    assert float(out.error) <= tol
    assert np.abs(plan.sum(0) - 1 / 120).sum() <= (1e-12 if dtype == "float64" else 1e-5)


def test_fast_solver_agrees_with_log_domain(rng):
    xp = array_namespace(np.zeros(1))
    data = problem(rng, 40, 30)
    la = np.log(data["a"] / data["a"].sum())
    lb = np.log(data["b"] / data["b"].sum())
    for eps in (1.0, 0.1, 0.01):
        slow = sinkhorn_log(xp, data["cost"], la, lb, eps, tol=1e-13, max_iter=10**6)
        fast = softk._ot.kernel.solve(xp, data["cost"], la, lb, eps, tol=1e-13, max_iter=10**6)
        p_slow = plan_from_potentials(xp, data["cost"], la, lb, slow.f, slow.g, eps)
        p_fast = plan_from_potentials(xp, data["cost"], la, lb, fast.f, fast.g, eps)
        np.testing.assert_allclose(p_fast, p_slow, atol=1e-12)


@pytest.mark.parametrize("geometry", ["cost", "clouds"])
@pytest.mark.parametrize("what", ["cost", "plan"])
def test_gradients_match_central_differences(backend, rng, geometry, what):
    data = problem(rng)
    if geometry == "cost":
        del data["x"], data["y"]
    else:
        del data["cost"]
    params = dict(epsilon=0.3, tol=1e-13, max_iter=100_000)
    ref = numpy_value(data, what, **params)
    cot = rng.normal(size=ref.shape)
    _, grads = run(backend, what, data, cot=cot, **params)
    for name, grad in grads.items():
        fd = central_differences(data, what, cot, name, **params)
        np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=1e-6 * max(1.0, np.abs(fd).max()), err_msg=name)


def test_value_gradient_is_the_plan_and_centred_potentials(backend, rng):
    data = {k: v for k, v in problem(rng).items() if k in ("cost", "a", "b")}
    params = dict(epsilon=0.1, tol=1e-12)
    _, grads = run(backend, "cost", data, cot=np.ones(()), **params)
    out = sot.sinkhorn(**data, **params)
    np.testing.assert_allclose(backend.to_numpy(grads["cost"]), out.plan, atol=1e-12)
    a = data["a"] / data["a"].sum()
    np.testing.assert_allclose(backend.to_numpy(grads["a"]), (out.f - a @ out.f) / data["a"].sum(), atol=1e-10)
    np.testing.assert_allclose((backend.to_numpy(grads["a"]) * data["a"]).sum(), 0.0, atol=1e-12)


def test_conjugate_gradients_match_the_schur_complement(rng):
    xp = array_namespace(np.zeros(1))
    cost = rng.random((2, 60, 140))
    la, lb = np.full((2, 60), -np.log(60)), np.full((2, 140), -np.log(140))
    r = sinkhorn_log(xp, cost, la, lb, 0.05, tol=1e-13, max_iter=10**5)
    plan = plan_from_potentials(xp, cost, la, lb, r.f, r.g, 0.05)
    v = rng.normal(size=plan.shape)
    schur = plan_vjp(xp, plan, v, 0.05)
    cg = plan_vjp(xp, plan, v, 0.05, method="cg", cg_tol=1e-13)
    np.testing.assert_allclose(cg, schur, atol=1e-10 * np.abs(schur).max())


def apply_problem(rng, geometry, n=7, m=5, k=3):
    """Data for ``apply`` tests: ``(data, v, params)``; "online" also shrinks the blocks (set by the caller)."""
    data = problem(rng, n, m)
    if geometry == "cost":
        del data["x"], data["y"]
    else:
        del data["cost"]
    params = dict(epsilon=0.3, tol=1e-13, max_iter=100_000)
    if geometry != "cost":
        params["online"] = geometry == "online"
    return data, rng.normal(size=(m, k)), params


def apply_value(data, v, params):
    return np.asarray(sot.sinkhorn(**data, **params).apply(v))


@pytest.fixture
def small_blocks(monkeypatch, request):
    """Blocks of 12 plan entries (several per problem) and CG beyond 2 targets.

    Not under JAX, whose compiled loops unroll the blocks (slow to compile): there
    the test checks that the blockwise code traces, on one block."""
    if "backend" in request.fixturenames and request.getfixturevalue("backend").name == "jax":
        return
    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 12)
    monkeypatch.setattr(softk._ot.blocks, "SCHUR_MAX", 2)


@pytest.mark.parametrize("geometry", ["cost", "clouds", "online"])
def test_apply_is_plan_times_v(backend, rng, geometry, small_blocks):
    data, v, params = apply_problem(rng, geometry)
    out = sot.sinkhorn(**{k: backend.asarray(x, "float64") for k, x in data.items()}, **params)
    plan = backend.to_numpy(out.plan)
    np.testing.assert_allclose(backend.to_numpy(out.apply(backend.asarray(v, "float64"))), plan @ v, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(out.apply(backend.asarray(v[:, 0], "float64"))), plan @ v[:, 0], atol=1e-12)


def test_apply_batched_is_plan_times_v(rng, small_blocks):
    data = problem(rng, batch=(3,))
    v = rng.normal(size=(3, 5, 2))
    for geometry in ({"cost": data["cost"]}, {"x": data["x"], "y": data["y"][0]}):  # y broadcast over the batch
        out = sot.sinkhorn(**geometry, a=data["a"], epsilon=0.2, tol=1e-12, online="x" in geometry)
        np.testing.assert_allclose(out.apply(v), out.plan @ v, atol=1e-12)
        np.testing.assert_allclose(out.apply(v[0]), out.plan @ v[0], atol=1e-12)


@pytest.mark.parametrize("geometry", ["cost", "clouds", "online"])
def test_apply_gradients_match_central_differences(backend, rng, geometry, small_blocks):
    data, v, params = apply_problem(rng, geometry)
    cot = rng.normal(size=(7, 3))
    names = [k for k in ARRAYS if k in data]
    arrays = {k: backend.asarray(data[k], "float64") for k in names}
    vb, cotb = backend.asarray(v, "float64"), backend.asarray(cot, "float64")
    if backend.name == "torch":
        import torch

        leaves = {k: x.clone().requires_grad_(True) for k, x in {**arrays, "v": vb}.items()}
        out = sot.sinkhorn(**{k: leaves[k] for k in names}, **params).apply(leaves["v"])
        grads = dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), cotb)))
    elif backend.name == "jax":
        import jax

        def fn(*values):
            *problem_arrays, vv = values
            return sot.sinkhorn(**dict(zip(names, problem_arrays)), **params).apply(vv)

        _, pullback = jax.vjp(fn, *arrays.values(), vb)
        grads = dict(zip([*names, "v"], pullback(cotb)))
    else:
        _, pullback = softk.vjp(sot.sinkhorn_apply, arrays.pop("cost", None), **arrays, v=vb, **params)
        grads = dict(zip([*names, "v"], pullback(cotb)))
    key = ("apply", geometry == "cost", cot.tobytes())
    if key not in _FD_CACHE:  # the dense solve's differences serve online too (online == dense is tested)
        params = {**params, "online": False} if geometry != "cost" else params
        fd = {}
        for name in [*names, "v"]:
            values = {**data, "v": v}
            fd[name] = np.zeros_like(values[name])
            for idx in np.ndindex(values[name].shape):
                sides = []
                for sign in (1, -1):
                    moved = {k: x.copy() for k, x in values.items()}
                    moved[name][idx] += sign * 1e-6
                    sides.append(apply_value({k: moved[k] for k in names}, moved["v"], params))
                fd[name][idx] = ((sides[0] - sides[1]) * cot).sum() / 2e-6
        _FD_CACHE[key] = fd
    for name, grad in grads.items():
        fd = _FD_CACHE[key][name]
        np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=1e-6 * max(1.0, np.abs(fd).max()), err_msg=name)


def test_online_apply_gradient_matches_dense(rng, monkeypatch):
    """Beyond SCHUR_MAX targets (conjugate gradients), weighted, several blocks."""
    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 2000)
    data = problem(rng, 60, 150, d=3)
    del data["cost"]
    v, cot = rng.normal(size=(150, 2)), rng.normal(size=(60, 2))
    results = []
    for online in (False, True):
        out, pullback = softk.vjp(sot.sinkhorn_apply, **data, v=v, epsilon=0.1, tol=1e-12, online=online)
        results.append((out, *pullback(cot)))
    for name, dense, online in zip(("out", "x", "y", "a", "b", "v"), *results):
        np.testing.assert_allclose(online, dense, atol=1e-9 * max(1.0, np.abs(dense).max()), err_msg=name)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_apply_gradient_equals_plan_gradient(rng, framework):
    data = problem(rng)
    v, w = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    if framework == "torch":
        torch = pytest.importorskip("torch")
        grads = []
        for use_apply in (True, False):
            c, vt = torch.tensor(data["cost"], requires_grad=True), torch.tensor(v, requires_grad=True)
            out = sot.sinkhorn(c, epsilon=0.2, tol=1e-12)
            pv = out.apply(vt) if use_apply else out.plan @ vt
            grads.append(torch.autograd.grad((pv * torch.tensor(w)).sum(), (c, vt)))
        for g1, g2 in zip(*grads):
            np.testing.assert_allclose(g1.numpy(), g2.numpy(), atol=1e-10)
    else:
        jax = pytest.importorskip("jax")

        def loss(c, vv, use_apply):
            out = sot.sinkhorn(c, epsilon=0.2, tol=1e-12)
            return ((out.apply(vv) if use_apply else out.plan @ vv) * w).sum()

        g1 = jax.grad(loss, argnums=(0, 1))(data["cost"], v, True)
        g2 = jax.grad(loss, argnums=(0, 1))(data["cost"], v, False)
        for p, q in zip(g1, g2):
            np.testing.assert_allclose(np.asarray(p), np.asarray(q), atol=1e-10)


def test_batched_equals_looped(backend, rng):
    data = problem(rng, batch=(3,))
    a = data["a"][0]  # broadcast over the batch
    out = sot.sinkhorn(backend.asarray(data["cost"], "float64"), a=backend.asarray(a, "float64"), b=backend.asarray(data["b"], "float64"), epsilon=0.1, tol=1e-12)
    for i in range(3):
        one = sot.sinkhorn(data["cost"][i], a=a, b=data["b"][i], epsilon=0.1, tol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(out.plan)[i], one.plan, atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(out.cost)[i], one.cost, atol=1e-12)


def test_batched_gradient_sums_over_broadcast_weights(rng):
    data = problem(rng, batch=(2,))
    a = data["a"][0]
    _, pullback = softk.vjp(sot.sinkhorn_cost, data["cost"], a=a, epsilon=0.2, tol=1e-12)
    grad_cost, grad_a = pullback(np.ones(2))
    assert grad_a.shape == a.shape
    singles = [softk.vjp(sot.sinkhorn_cost, data["cost"][i], a=a, epsilon=0.2, tol=1e-12)[1](np.ones(()))[1] for i in range(2)]
    np.testing.assert_allclose(grad_a, sum(singles), atol=1e-10)


def test_warm_start_converges_at_once(backend, rng):
    cost = backend.asarray(problem(rng, 40, 30)["cost"], "float64")
    first = sot.sinkhorn(cost, epsilon=0.01, tol=1e-9)
    again = sot.sinkhorn(cost, epsilon=0.01, tol=1e-9, init=(first.f, first.g))
    assert int(again.n_iter) <= 10 < int(first.n_iter)
    np.testing.assert_allclose(backend.to_numpy(again.plan), backend.to_numpy(first.plan), atol=1e-9)


def test_honest_non_convergence(backend, rng):
    cost = backend.asarray(problem(rng, 40, 30)["cost"], "float64")
    with pytest.warns(softk.NotConvergedWarning, match="sinkhorn did not converge"):
        out = sot.sinkhorn(cost, epsilon=1e-3, max_iter=25, tol=1e-10)
    assert not bool(out.converged) and int(out.n_iter) <= 25 and float(out.error) > 1e-10
    assert np.isfinite(backend.to_numpy(out.plan)).all()


def test_sinkhorn_divergence(backend, rng):
    x, y = rng.random((8, 2)), rng.random((6, 2)) + 1.0
    xb, yb = backend.asarray(x, "float64"), backend.asarray(y, "float64")
    assert abs(float(sot.sinkhorn_divergence(xb, xb, epsilon=0.1, tol=1e-10))) < 1e-10
    assert float(sot.sinkhorn_divergence(xb, yb, epsilon=0.1, tol=1e-10)) > 0.1


def test_sinkhorn_divergence_gradient_torch(rng):
    torch = pytest.importorskip("torch")
    x, y = rng.random((6, 2)), rng.random((5, 2)) + 1.0
    xt = torch.tensor(x, requires_grad=True)
    (grad,) = torch.autograd.grad(sot.sinkhorn_divergence(xt, torch.tensor(y), epsilon=0.2, tol=1e-11), xt)
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1e-6
        fd[idx] = (float(sot.sinkhorn_divergence(x + e, y, epsilon=0.2, tol=1e-11)) - float(sot.sinkhorn_divergence(x - e, y, epsilon=0.2, tol=1e-11))) / 2e-6
    np.testing.assert_allclose(grad.numpy(), fd, atol=1e-6)


def test_jit_and_grad_under_jax(rng):
    jax = pytest.importorskip("jax")
    cost = problem(rng)["cost"]
    value = jax.jit(lambda c: sot.sinkhorn(c, epsilon=0.1, tol=1e-12).cost)
    grad = jax.jit(jax.grad(lambda c: sot.sinkhorn(c, epsilon=0.1, tol=1e-12).cost))
    ref = sot.sinkhorn(cost, epsilon=0.1, tol=1e-12)
    np.testing.assert_allclose(float(value(cost)), float(ref.cost), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grad(cost)), ref.plan, atol=1e-10)


@pytest.mark.parametrize("online", [False, True])
def test_traced_loop_over_relaxes_as_the_eager_solver(online):
    # Four points each side at eps 0.1 of a cost spread of ~10: plain Sinkhorn needs more than
    # 30,000 iterations; over-relaxed the eager strategies need 7,505 (kernel) and 13,634
    # (online). The traced loop (always JAX's) must take about as many and reach the same
    # values, not stop at max_iter.
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)) + 0.5
    eager = sot.sinkhorn(x=x, y=y, epsilon=0.1, online=online, max_iter=30_000)
    traced = jax.jit(lambda x, y: sot.sinkhorn(x=x, y=y, epsilon=0.1, online=online, max_iter=30_000))(jnp.asarray(x), jnp.asarray(y))
    div = float(sot.sinkhorn_divergence(jnp.asarray(x), jnp.asarray(y), epsilon=0.1, max_iter=30_000))
    assert bool(eager.converged) and bool(traced.converged)
    assert int(traced.n_iter) <= 1.3 * int(eager.n_iter)
    np.testing.assert_allclose(float(traced.cost), float(eager.cost), rtol=1e-10)
    np.testing.assert_allclose(div, float(sot.sinkhorn_divergence(x, y, epsilon=0.1, max_iter=30_000)), rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_keeps_array_type_dtype_and_device(backend, rng, dtype):
    cost = backend.asarray(problem(rng)["cost"], dtype)
    out = sot.sinkhorn(cost, epsilon=0.5, tol=1e-4)
    for arr in (out.plan, out.cost, out.f, out.g):
        assert type(arr) is type(cost) and arr.dtype == cost.dtype and device(arr) == device(cost)


def test_stays_on_a_non_default_device(rng):
    xps = pytest.importorskip("array_api_strict")
    dev = xps.Device("device1")
    cost = xps.asarray(problem(rng)["cost"], device=dev)
    out, pullback = softk.vjp(sot.sinkhorn_plan, cost, epsilon=0.2)
    (grad,) = pullback(xps.ones(out.shape, dtype=out.dtype, device=dev))
    assert out.device == dev and grad.device == dev


BAD = [
    (dict(a=-np.ones(7)), ValueError, "a must be positive"),
    (dict(b=np.zeros(5)), ValueError, "b must be positive"),
    (dict(a=np.ones(6)), ValueError, r"a must have shape \(\.\.\., 7\)"),
    (dict(b=np.ones((5, 1))), ValueError, r"b must have shape \(\.\.\., 5\)"),
    (dict(epsilon=0.0), ValueError, "epsilon must be finite and > 0"),
    (dict(epsilon=-1.0), ValueError, "epsilon must be finite and > 0"),
    (dict(tol=float("nan")), ValueError, "tol must be finite and > 0"),
    (dict(max_iter=0), ValueError, "max_iter must satisfy"),
    (dict(a=np.array([1.0, np.nan, 1, 1, 1, 1, 1])), ValueError, "a contains NaN"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_arguments(backend, rng, kwargs, error, match):
    cost = problem(rng)["cost"]
    kw = {"epsilon": 0.1, **kwargs}
    for k in ("a", "b"):
        if k in kw:
            kw[k] = backend.asarray(kw[k], "float64")
    with pytest.raises(error, match=match):
        sot.sinkhorn(backend.asarray(cost, "float64"), **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_cost_or_points(backend, rng, bad):
    data = problem(rng)
    data["cost"][1, 2] = bad
    data["y"][0, 1] = bad
    with pytest.raises(ValueError, match="cost contains"):
        sot.sinkhorn(backend.asarray(data["cost"], "float64"), epsilon=0.1)
    with pytest.raises(ValueError, match="y contains"):
        sot.sinkhorn(x=backend.asarray(data["x"], "float64"), y=backend.asarray(data["y"], "float64"), epsilon=0.1)


def test_bad_geometry(rng):
    data = problem(rng)
    with pytest.raises(TypeError, match="either cost or the point clouds"):
        sot.sinkhorn(data["cost"], x=data["x"], y=data["y"], epsilon=0.1)
    with pytest.raises(TypeError, match="both point clouds"):
        sot.sinkhorn(x=data["x"], epsilon=0.1)
    with pytest.raises(ValueError, match="same dimension"):
        sot.sinkhorn(x=data["x"], y=data["y"][:, :1], epsilon=0.1)
    with pytest.raises(ValueError, match=r"cost must have shape \(\.\.\., n, m\)"):
        sot.sinkhorn(data["cost"][0], epsilon=0.1)
    with pytest.raises(TypeError, match="one dtype"):
        sot.sinkhorn(data["cost"], a=data["a"].astype(np.float32), epsilon=0.1)
    with pytest.raises(TypeError, match="real floating"):
        sot.sinkhorn(data["cost"].astype(np.int64), epsilon=0.1)
    with pytest.raises(ValueError, match=r"init g must have shape \(\.\.\., 5\)"):
        sot.sinkhorn(data["cost"], epsilon=0.1, init=(np.zeros(7), np.zeros(4)))
    with pytest.raises(ValueError, match=r"v must have shape"):
        sot.sinkhorn(data["cost"], epsilon=0.1).apply(np.ones(4))


def test_mixed_frameworks_and_devices(rng):
    torch = pytest.importorskip("torch")
    data = problem(rng)
    with pytest.raises(TypeError, match="pass arrays from one framework"):
        sot.sinkhorn(data["cost"], a=torch.tensor(data["a"]), epsilon=0.1)
    xps = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="device"):
        sot.sinkhorn(xps.asarray(data["cost"]), a=xps.asarray(data["a"], device=xps.Device("device1")), epsilon=0.1)


def test_online_matches_dense(backend, rng, monkeypatch):
    import softk._ot.blocks

    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 200)  # three blocks even for this small problem
    data = problem(rng, 30, 20, d=3)
    del data["cost"]
    arrays = {k: backend.asarray(v, "float64") for k, v in data.items()}
    dense = sot.sinkhorn(**arrays, epsilon=0.2, tol=1e-11, online=False)
    online = sot.sinkhorn(**arrays, epsilon=0.2, tol=1e-11, online=True)
    assert bool(online.converged)
    np.testing.assert_allclose(backend.to_numpy(online.cost), backend.to_numpy(dense.cost), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(online.plan), backend.to_numpy(dense.plan), atol=1e-10)


def test_online_value_gradient_matches_dense(rng, monkeypatch):
    import softk._ot.blocks

    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 200)
    data = problem(rng, 30, 20, d=3)
    del data["cost"]
    grads = []
    for online in (False, True):
        _, pullback = softk.vjp(sot.sinkhorn_cost, **data, epsilon=0.2, tol=1e-11, online=online)
        grads.append(pullback(np.ones(())))
    for dense, online in zip(*grads):
        np.testing.assert_allclose(online, dense, atol=1e-9)


def test_online_batched_value_gradient_broadcast_x(rng, monkeypatch):
    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 40)
    x, y = rng.random((9, 2)), rng.random((2, 7, 2))
    grads = [softk.vjp(sot.sinkhorn_cost, x=x, y=y, epsilon=0.1, tol=1e-12, online=o)[1](np.ones(2)) for o in (False, True)]
    assert grads[1][0].shape == x.shape
    for dense, online in zip(*grads):
        np.testing.assert_allclose(online, dense, atol=1e-10)


def test_online_needs_point_clouds(rng):
    with pytest.raises(ValueError, match="online=True needs point clouds"):
        sot.sinkhorn(problem(rng)["cost"], epsilon=0.1, online=True)


def test_online_matches_dense_moderate_size(rng, monkeypatch):
    """A few hundred points, several blocks, small epsilon: potentials, value, plan and gradients."""
    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 5000)
    x, y = rng.random((300, 3)), rng.random((200, 3))
    a = rng.uniform(0.5, 1.5, 300)
    kw = dict(x=x, y=y, a=a, epsilon=0.01, tol=1e-10)
    dense, online = sot.sinkhorn(**kw, online=False), sot.sinkhorn(**kw, online=True)
    assert bool(online.converged) and float(online.error) <= 1e-10
    np.testing.assert_allclose(online.cost, dense.cost, rtol=1e-10)
    np.testing.assert_allclose(online.plan, dense.plan, atol=1e-11)
    shift = (online.f - dense.f).mean()
    np.testing.assert_allclose(online.f - shift, dense.f, atol=1e-8)
    np.testing.assert_allclose(online.g + shift, dense.g, atol=1e-8)


def test_online_recovers_from_underflowing_rows(rng):
    """No epsilon scaling, far clouds: at zero potentials every entry of the plan underflows
    (C / eps >= 800), which the online sweep must redo max-shifted."""
    x, y = rng.random((40, 2)), rng.random((30, 2)) + 3.0
    kw = dict(x=x, y=y, epsilon=0.01, tol=1e-9, scaling=False)
    online, dense = sot.sinkhorn(**kw, online=True), sot.sinkhorn(**kw, online=False)
    assert bool(online.converged)
    np.testing.assert_allclose(online.plan, dense.plan, atol=1e-9)


def test_online_float32(rng):
    torch = pytest.importorskip("torch")
    x, y = rng.random((200, 3)), rng.random((150, 3))
    ref = sot.sinkhorn(x=x, y=y, epsilon=0.01, tol=1e-10, online=False)
    out = sot.sinkhorn(x=torch.tensor(x, dtype=torch.float32), y=torch.tensor(y, dtype=torch.float32), epsilon=0.01, tol=1e-4, online=True)
    assert bool(out.converged) and out.f.dtype == torch.float32
    assert np.abs(out.plan.double().numpy() - ref.plan).sum() <= 3e-4  # L1, as the tolerance


def test_online_never_forms_the_plan(rng, monkeypatch):
    """Solve, value gradient, apply and its gradient online: NumPy's traced peak stays far below
    one n x m array (the dense run, measured the same way, exceeds it: the check can fail)."""
    import tracemalloc

    monkeypatch.setattr(softk._ot.blocks, "BLOCK_ENTRIES", 2**13)
    n, m = 800, 600
    x, y, v = rng.random((n, 2)), rng.random((m, 2)), rng.normal(size=(m, 2))
    full = n * m * 8
    peaks = {}
    for online in (True, False):
        tracemalloc.start()
        kw = dict(x=x, y=y, epsilon=0.05, tol=1e-6, online=online)
        _, pullback = softk.vjp(sot.sinkhorn_cost, **kw)
        pullback(np.ones(()))
        out, pullback = softk.vjp(sot.sinkhorn_apply, **kw, v=v)
        grads = pullback(np.ones_like(out))
        peaks[online] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert all(np.isfinite(g).all() for g in grads)
    assert peaks[False] > full
    assert peaks[True] < full / 4, peaks  # a few blocks (64 kB each) and O(n + m) vectors
