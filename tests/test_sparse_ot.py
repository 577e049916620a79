"""Sparsity-constrained OT: the k-sparse projection, the Newton solver, gradients, POT oracles."""

from __future__ import annotations

import contextlib
import io
import itertools
import warnings

import numpy as np
import pytest
from conftest import Op, central_difference

import softk
from softk.sparse_newton import evaluate
from softk.sparse_ot import MarginalGapWarning, sparse_ot, sparse_ot_plan, sparse_ot_value
from softk.sparse_projection import sparse_simplex_projection

FORMULATIONS = ["semi-dual", "dual"]


def _no_jax(backend, strict=False):
    """JAX compiles the whole solver per shape (~10 s here): it is covered once, in
    ``test_jax_jit_vmap_grad_like_numpy``; array-api-strict is slow for the 2 n m solves of a
    finite-difference check (its solver path is the NumPy one, tested elsewhere)."""
    if backend.name == "jax" or (strict and backend.name == "array_api_strict"):
        pytest.skip("covered by the NumPy path and test_jax_jit_vmap_grad_like_numpy")


def _cost(rng, n=7, m=6, batch=()):
    x, y = rng.normal(size=(*batch, n, 2)), rng.normal(size=(*batch, m, 2)) + 0.5
    c = ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    return c / c.max()


def _simplex(v):
    u = np.sort(v)[::-1]
    cums = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > cums - 1)[0][-1]
    return np.maximum(v - (cums[rho] - 1) / (rho + 1), 0)


def test_projection_is_the_best_k_sparse_point(rng):
    for _ in range(20):
        x, k = rng.normal(size=6), int(rng.integers(1, 6))
        p = sparse_simplex_projection(x, k)
        best = min(
            (np.sum((q - x) ** 2), tuple(q))
            for s in itertools.combinations(range(6), k)
            for q in [np.zeros(6)]
            if not q.__setitem__(list(s), _simplex(x[list(s)]))
        )
        assert np.count_nonzero(p) <= k and abs(p.sum() - 1) < 1e-12
        assert np.sum((p - x) ** 2) <= best[0] + 1e-12


def test_projection_on_every_backend(backend, rng):
    x = rng.normal(size=(3, 8))
    out = backend.to_numpy(sparse_simplex_projection(backend.asarray(x, "float64"), 3))
    np.testing.assert_allclose(out, np.stack([sparse_simplex_projection(r, 3) for r in x]), atol=1e-14)
    assert (np.count_nonzero(out, axis=-1) <= 3).all()


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_plan_is_feasible_and_k_sparse(backend, rng, formulation):
    _no_jax(backend)
    c = _cost(rng, batch=(2,))
    r = sparse_ot(backend.asarray(c, "float64"), k=2, gamma=0.05, formulation=formulation)
    plan = backend.to_numpy(r.plan)
    assert bool(r.converged) and float(r.error) < 1e-8
    np.testing.assert_allclose(plan.sum(-1), 1 / 7, atol=1e-9)
    np.testing.assert_allclose(plan.sum(-2), 1 / 6, atol=1e-9)
    assert (np.count_nonzero(plan, axis=-2) <= 2).all() and (plan >= 0).all()
    single = sparse_ot(c[1], k=2, gamma=0.05, formulation=formulation)  # batching = one solve per entry
    np.testing.assert_allclose(plan[1], single.plan, atol=1e-9)
    np.testing.assert_allclose(backend.to_numpy(r.objective)[1], single.objective, atol=1e-12)


def _pot(formulation, c, k, gamma):
    ot = pytest.importorskip("ot")
    fn = ot.smooth.smooth_ot_semi_dual if formulation == "semi-dual" else ot.smooth.smooth_ot_dual
    n, m = c.shape
    with contextlib.redirect_stdout(io.StringIO()):  # POT 0.9.7 prints shapes from its top-k
        plan, log = fn(np.full(n, 1 / n), np.full(m, 1 / m), c, gamma, reg_type="sparsity_constrained", max_nz=k, stopThr=1e-14, numItermax=5000, log=True)
    x = log["alpha"] if formulation == "semi-dual" else np.concatenate([log["alpha"], log["beta"]])
    objective = evaluate(np, c.T, np.full(n, 1 / n), np.full(m, 1 / m), x, np.asarray(gamma), k, formulation == "dual")[0]
    return plan, objective


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_against_pot_where_the_marginals_are_met(rng, formulation):
    c, k, gamma = _cost(rng, 6, 5), 2, 0.05
    theirs, objective = _pot(formulation, c, k, gamma)
    ours = sparse_ot(c, k=k, gamma=gamma, formulation=formulation)
    assert np.array_equal(ours.plan > 0, theirs > 1e-9)
    np.testing.assert_allclose(ours.plan, theirs, atol=1e-6)
    assert float(ours.objective) >= objective - 1e-12
    assert float(ours.error) < 1e-8 < np.abs(theirs.sum(1) - 1 / 6).sum()


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_repaired_plan_where_the_constraint_binds(backend, rng, formulation):
    """The dual is maximised at a kink here (POT's plan misses the marginals); the repaired plan
    meets them with at most k nonzeros per column, and the dual value certifies its gap."""
    _no_jax(backend, strict=formulation == "dual")  # array-api-strict (no tolist) once is enough
    c, k, gamma = _cost(rng, 6, 5, batch=(2,)), 2, 0.5
    r = sparse_ot(backend.asarray(c, "float64"), k=k, gamma=gamma, formulation=formulation)
    plan, objective, lower = (backend.to_numpy(x) for x in (r.plan, r.objective, r.dual_value))
    assert bool(r.converged) and float(r.error) < 1e-9
    np.testing.assert_allclose(plan.sum(-1), 1 / 6, atol=1e-12)
    np.testing.assert_allclose(plan.sum(-2), 1 / 5, atol=1e-12)
    assert (np.count_nonzero(plan, axis=-2) <= k).all() and (plan >= 0).all()
    np.testing.assert_allclose(objective, (plan * c).sum((-2, -1)) + gamma / 2 * (plan**2).sum((-2, -1)), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(r.gap), objective - lower, atol=1e-15)
    assert (lower <= objective + 1e-12).all()  # weak duality (the gap may be the problem's own)


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_against_pot_where_the_constraint_binds(rng, formulation):
    """POT's plan misses the rows; its dual value (5000 steps) is within 2% of ours (stopped
    once the ascent stalls), and our feasible plan's objective is above both (weak duality)."""
    c, k, gamma = _cost(rng, 6, 5), 2, 0.5
    theirs, pot_objective = _pot(formulation, c, k, gamma)
    ours = sparse_ot(c, k=k, gamma=gamma, formulation=formulation)
    assert np.abs(theirs.sum(1) - 1 / 6).sum() > 0.1 and float(ours.error) < 1e-12
    assert abs(float(ours.dual_value) - pot_objective) < 2e-2 * pot_objective
    assert float(ours.objective) >= max(pot_objective, float(ours.dual_value))


def test_repair_failure_warns():
    with pytest.warns(MarginalGapWarning, match="repair"):  # two rows, one column, one nonzero
        r = sparse_ot(np.zeros((2, 1)), k=1, gamma=1.0)
    assert not bool(r.converged) and float(r.error) > 0.9 and np.count_nonzero(r.plan) == 1


def test_repaired_plan_solves_the_problem_on_its_support():
    """With cycles in its support, the repaired plan is polished to the optimum of the quadratic
    problem restricted to that support: alpha_i + beta_j = C_ij + gamma P_ij on every entry."""
    c, gamma = _cost(np.random.default_rng(2), 40, 40), 3e-2
    r = sparse_ot(c, k=2, gamma=gamma)
    support = r.plan > 0
    rows, cols = np.nonzero(support)
    parent = list(range(80))  # count the independent cycles of the support with a union-find

    def find(u):
        while parent[u] != u:
            u = parent[u]
        return u

    cycles = 0
    for i, j in zip(rows, cols):
        u, v = find(i), find(40 + j)
        cycles += u == v
        parent[u] = v
    assert cycles >= 2 and bool(r.converged) and float(r.gap) > 0 and np.count_nonzero(r.plan, axis=0).max() <= 2
    residual = (r.alpha[:, None] + r.beta[None, :] - c - gamma * r.plan)[support]
    np.testing.assert_allclose(residual, 0.0, atol=1e-12)


def test_repaired_gradients(rng):
    """Gradients of the repaired plan: those of the quadratic problem on its support (here a
    spanning tree, so the plan is locally constant and the objective's gradient is the plan)."""
    c = _cost(rng, 6, 5)
    r = sparse_ot(c, k=2, gamma=0.5)
    value, pullback = softk.vjp(sparse_ot_value, c, k=2, gamma=0.5)
    grad_c, grad_a, grad_b = pullback(np.ones(()))
    np.testing.assert_allclose(value, r.objective, rtol=1e-14)
    np.testing.assert_allclose(grad_c, r.plan, atol=1e-15)
    support = r.plan > 0  # alpha_i + beta_j = C_ij + gamma P_ij on the support
    np.testing.assert_allclose((grad_a[:, None] + grad_b[None, :])[support], (c + 0.5 * r.plan)[support], atol=1e-12)
    plan, pullback = softk.vjp(sparse_ot_plan, c, k=2, gamma=0.5)
    assert np.count_nonzero(plan) == 6 + 5 - 1  # a spanning tree
    np.testing.assert_allclose(pullback(rng.normal(size=c.shape))[0], 0.0, atol=1e-9)


def test_k1_is_exact_ot(rng):
    ot = pytest.importorskip("ot")
    c = _cost(rng, 6, 6)
    exact = ot.emd(np.full(6, 1 / 6), np.full(6, 1 / 6), c)
    for formulation in FORMULATIONS:
        np.testing.assert_allclose(sparse_ot(c, k=1, gamma=1e-3, formulation=formulation).plan, exact, atol=1e-12)


def test_large_k_is_quadratic_ot(rng):
    ot = pytest.importorskip("ot")
    c = _cost(rng, 6, 5)
    with contextlib.redirect_stdout(io.StringIO()):
        quad = ot.smooth.smooth_ot_semi_dual(np.full(6, 1 / 6), np.full(5, 1 / 5), c, 2.0, reg_type="l2", stopThr=1e-14, numItermax=5000)
    r = sparse_ot(c, k=6, gamma=2.0)
    assert np.count_nonzero(r.plan, axis=0).max() > 2  # the constraint is inactive
    np.testing.assert_allclose(r.plan, quad, atol=1e-6)


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_objective_gradient(backend, rng, formulation):
    _no_jax(backend, strict=True)
    c = _cost(rng, 4, 3)
    op = Op(sparse_ot_value, k=2, gamma=0.15, formulation=formulation)
    value, grad = backend.value_and_grad(op, backend.asarray(c, "float64"), backend.asarray(np.ones(()), "float64"))
    plan = sparse_ot(c, k=2, gamma=0.15, formulation=formulation).plan
    np.testing.assert_allclose(backend.to_numpy(grad), plan, atol=1e-9)  # dF/dC = P
    np.testing.assert_allclose(backend.to_numpy(grad), central_difference(backend, op, c, np.ones(())), atol=1e-6)


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_plan_gradient(backend, rng, formulation):
    _no_jax(backend, strict=True)
    c = _cost(rng, 4, 3)
    v = rng.normal(size=(4, 3))
    op = Op(sparse_ot_plan, k=2, gamma=0.15, formulation=formulation)
    _, grad = backend.value_and_grad(op, backend.asarray(c, "float64"), backend.asarray(v, "float64"))
    np.testing.assert_allclose(backend.to_numpy(grad), central_difference(backend, op, c, v), atol=1e-6)


def test_weights_and_their_gradients(rng):
    c = _cost(rng, 5, 4)
    a, b = rng.uniform(0.5, 1.5, 5), rng.uniform(0.5, 1.5, 4)
    a, b = a / a.sum(), b / b.sum()
    r = sparse_ot(c, a, b, k=2, gamma=0.05)
    np.testing.assert_allclose(r.plan.sum(1), a, atol=1e-10)
    np.testing.assert_allclose(r.plan.sum(0), b, atol=1e-12)
    _, pullback = softk.vjp(sparse_ot_value, c, a, b, k=2, gamma=0.05)
    _, ga, gb = pullback(np.ones(()))
    # along a direction that keeps the totals equal, the pullback is the derivative
    da, db = rng.normal(size=5), rng.normal(size=4)
    da, db = da - da.mean(), db - db.mean()
    h = 1e-6
    fd = (sparse_ot(c, a + h * da, b + h * db, k=2, gamma=0.05).objective - sparse_ot(c, a - h * da, b - h * db, k=2, gamma=0.05).objective) / (2 * h)
    assert abs(fd - (ga @ da + gb @ db)) < 1e-6


def test_jax_jit_vmap_grad_like_numpy(rng):
    """Under jax.jit, vmap and grad the warm start and the repair run on the host
    (jax.pure_callback): where the constraint binds, the same feasible k-sparse plan as NumPy's,
    per problem, without a warning; gradients as softk.vjp's. One compile per function."""
    jax = pytest.importorskip("jax")
    c, k, gamma = _cost(rng, 10, 12, batch=(2,)), 2, 0.5
    refs = [sparse_ot(x, k=k, gamma=gamma) for x in c]
    assert all(np.count_nonzero(sparse_ot(x, k=10, gamma=gamma).plan, axis=0).max() > k for x in c)  # binds

    v = rng.normal(size=c.shape[1:])

    def objective(x):  # the objective and the plan, both differentiated
        r = sparse_ot(x, k=k, gamma=gamma)
        return r.objective + (r.plan * v).sum(), r

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (_, r), grad = jax.jit(jax.vmap(jax.value_and_grad(objective, has_aux=True)))(jax.numpy.asarray(c))
        value_grad = jax.block_until_ready(jax.jit(jax.grad(Op(sparse_ot_value, k=k, gamma=gamma)))(jax.numpy.asarray(c[0])))
    assert not [w for w in caught if issubclass(w.category, (MarginalGapWarning, softk.NotConvergedWarning))]
    plan = np.asarray(r.plan)
    assert float(np.max(r.error)) < 1e-6 and bool(np.all(r.converged)) and (np.count_nonzero(plan, axis=-2) <= k).all()
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(plan[i], ref.plan, atol=1e-10)
        np.testing.assert_allclose(np.asarray(r.objective)[i], ref.objective, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(r.dual_value)[i], ref.dual_value, rtol=1e-12)
        _, pullback = softk.vjp(sparse_ot_plan, c[i], k=k, gamma=gamma)
        np.testing.assert_allclose(grad[i], ref.plan + pullback(v)[0], atol=1e-10)  # dF/dC = P, plus the plan's VJP
    _, pullback = softk.vjp(sparse_ot_value, c[0], k=k, gamma=gamma)
    np.testing.assert_allclose(value_grad, pullback(np.ones(()))[0], atol=1e-10)


def test_torch_compile_runs_the_repair_like_eager(rng):
    """Under ``torch.compile`` the host code (warm start, repair) runs at a graph break: the
    repaired plan, objective and gradient equal eager mode's where the constraint binds."""
    torch = pytest.importorskip("torch")
    c = torch.asarray(_cost(rng, 10, 12))
    ref = sparse_ot(c, k=2, gamma=0.5)
    assert float(ref.error) < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's graph-break notes
        out = torch.compile(lambda c: sparse_ot(c, k=2, gamma=0.5), backend="aot_eager")(c)
        leaf = c.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.compile(lambda c: sparse_ot_value(c, k=2, gamma=0.5), backend="aot_eager")(leaf), leaf)
    assert bool(out.converged) and float(out.error) < 1e-12
    torch.testing.assert_close(out.plan, ref.plan, rtol=0, atol=1e-14)
    torch.testing.assert_close(out.objective, ref.objective)
    torch.testing.assert_close(grad, ref.plan, rtol=0, atol=1e-14)  # dF/dC = P


def test_float32(backend, rng):
    _no_jax(backend)
    r = sparse_ot(backend.asarray(_cost(rng), "float32"), k=3, gamma=0.05)
    assert bool(r.converged) and float(r.error) < 1e-4 and r.plan.dtype == backend.dtype("float32")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0, gamma=0.1), "k must satisfy"),
        (dict(k=8, gamma=0.1), "k must satisfy"),
        (dict(k=2, gamma=0.0), "gamma must be"),
        (dict(k=2, gamma=0.1, formulation="primal"), "formulation"),
    ],
)
def test_bad_arguments(rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparse_ot(_cost(rng), **kwargs)


def test_bad_arrays(rng):
    c = _cost(rng)
    with pytest.raises(ValueError, match="cost contains NaN"):
        sparse_ot(np.where(c > 0.5, np.nan, c), k=2, gamma=0.1)
    with pytest.raises(ValueError, match="equal totals"):
        sparse_ot(c, np.ones(7), np.ones(6), k=2, gamma=0.1)
    with pytest.raises(ValueError, match="a must be positive"):
        sparse_ot(c, np.zeros(7), k=2, gamma=0.1)
    with pytest.raises(TypeError, match="cost must"):
        sparse_ot(c.tolist(), k=2, gamma=0.1)


def test_few_steps_still_feasible(rng):
    """The dual solve may stop anywhere: the repair still returns a feasible k-sparse plan,
    and the dual value (a lower bound at any alpha) a valid, larger, gap."""
    c = _cost(rng, 30, 30)
    full, short = sparse_ot(c, k=2, gamma=1e-2), sparse_ot(c, k=2, gamma=1e-2, max_iter=1)
    for r in (full, short):
        assert bool(r.converged) and float(r.error) < 1e-9 and np.count_nonzero(r.plan, axis=0).max() <= 2
        assert float(r.gap) >= -1e-12
    assert int(short.n_iter) <= 1 and float(short.dual_value) <= float(full.dual_value) + 1e-12
