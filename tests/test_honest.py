"""No silent wrong results: each case the engine review reproduced, on every backend.

Every result is either right or says it is not (``converged=False`` and a
:class:`softk.NotConvergedWarning`, or a clear error naming the argument);
``error`` is recomputed here from the arrays returned.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import central_difference

import softk


def _plan_error(out) -> float:
    """``||P 1 - a||_1 + ||P^T 1 - b||_1`` of the returned plan (uniform weights), in float64."""
    plan = np.asarray(out, dtype=np.float64)
    n, m = plan.shape[-2:]
    rows = np.abs(plan.sum(-1) - 1.0 / n).sum(-1)
    cols = np.abs(plan.sum(-2) - 1.0 / m).sum(-1)
    return float(np.max(rows + cols))


def _solve(backend, cost, dtype, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = softk.sinkhorn(backend.asarray(cost, dtype), **kwargs)
        plan = backend.to_numpy(out.plan)
    flagged = any(issubclass(w.category, softk.NotConvergedWarning) for w in caught)
    return out, plan, flagged


@pytest.mark.parametrize("dtype, big", [("float64", 1e20), ("float32", 1e10)])
def test_a_huge_finite_cost_forbids_a_transition(backend, rng, dtype, big):
    cost = rng.random((5, 6))
    cost[0, 0] = big
    out, plan, flagged = _solve(backend, cost, dtype, epsilon=0.01)
    assert bool(out.converged) and not flagged
    assert abs(plan.astype(np.float64).sum() - 1.0) < 1e-4
    assert plan[0, 0] == 0.0
    assert _plan_error(plan) <= float(out.error) * 1.01 + 1e-12
    assert float(out.error) <= (1e-6 if dtype == "float64" else 1e-4)


@pytest.mark.parametrize(
    "dtype, eps",
    [("float32", 1e-3), ("float32", 1e-6), ("float32", 1e-8), ("float64", 1e-12), ("float16", 1e-2)],
)
def test_error_and_converged_describe_the_returned_plan(backend, rng, dtype, eps):
    if dtype == "float16" and backend.name in ("jax", "array_api_strict"):
        pytest.skip(f"{backend.name}: float16 linear algebra is not provided")
    cost = rng.random((5, 6))
    out, plan, flagged = _solve(backend, cost, dtype, epsilon=eps, max_iter=2000)  # enough where it converges
    actual = _plan_error(plan)
    reported = float(out.error)
    # the reported error is the returned plan's (up to the rounding of the test's own sums); where
    # rounding leaves the plan meaningless (float32 at eps 1e-8: every exponent is off by ~10), both
    # errors are far above tol, and that is what must be said
    summation = 2 * sum(cost.shape) * float(np.finfo(dtype).eps)  # the rounding of the test's own sums
    if reported < 0.1:
        assert abs(actual - reported) <= 0.05 * max(actual, reported) + summation
    else:
        assert actual > 0.01 and not bool(out.converged)
    assert bool(out.converged) == (reported <= {"float64": 1e-6, "float32": 1e-4, "float16": 1e-2}[dtype])
    assert flagged == (not bool(out.converged))
    if bool(out.converged):
        assert actual <= 1.05 * {"float64": 1e-6, "float32": 1e-4, "float16": 1e-2}[dtype] + summation


def test_float16_plan_at_large_epsilon_is_the_measured_one(backend, rng):
    # 750 entries of ~1.3e-3: the guarded exponential once subtracted its cut (1.8e-4 in float16)
    # from every entry, a plan 13% light while error said 4e-3
    if backend.name in ("jax", "array_api_strict"):
        pytest.skip(f"{backend.name}: float16 linear algebra is not provided")
    cost = rng.random((30, 25))
    out, plan, _ = _solve(backend, cost, "float16", epsilon=10.0, max_iter=2000)
    summation = 2 * sum(cost.shape) * float(np.finfo(np.float16).eps)  # the rounding of the test's own sums
    assert abs(_plan_error(plan) - float(out.error)) <= 0.05 * float(out.error) + summation
    assert abs(float(np.asarray(plan, np.float64).sum()) - 1.0) <= summation


@pytest.mark.parametrize("fn", [softk.sinkhorn_cost, softk.sinkhorn_plan])
def test_every_sinkhorn_function_warns(backend, rng, fn):
    cost = backend.asarray(rng.random((6, 7)), "float64")
    with pytest.warns(softk.NotConvergedWarning, match=f"{fn.__name__} did not converge"):
        fn(cost, epsilon=1e-3, max_iter=3, scaling=False)


def test_apply_warns(backend, rng):
    cost = backend.asarray(rng.random((6, 7)), "float64")
    v = backend.asarray(rng.random((7, 2)), "float64")
    with pytest.warns(softk.NotConvergedWarning):
        softk.sinkhorn_apply(cost, v=v, epsilon=1e-3, max_iter=3, scaling=False)


def test_divergence_of_separated_small_clouds_converges(backend):
    """Regression: the cross solve warm-started from the two self-transports stalled here (its
    error fell like 1 / max_iter, 1e-5 after 10,000 iterations); it now gives way to the schedule."""
    pts = np.array([[-2.3104, -0.3733, -1.0608, 0.9995, -0.884, -1.2755], [1.1357, -1.2269, 0.0714, 0.338, 0.1535, -0.6333],
                    [1.0112, -0.2427, -0.773, -1.5952, -0.687, 1.4881], [-1.2655, -1.1195, 1.1665, 0.9262, 0.6539, 0.1482]])
    x, y = backend.asarray(pts[:, :3], "float64"), backend.asarray(pts[:, 3:], "float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error", softk.NotConvergedWarning)
        value = float(softk.sinkhorn_divergence(x, y, epsilon=0.1))
    reference = softk.sinkhorn_cost(x=pts[:, :3], y=pts[:, 3:], epsilon=0.1)
    reference -= 0.5 * (softk.sinkhorn_cost(x=pts[:, :3], y=pts[:, :3], epsilon=0.1)
                        + softk.sinkhorn_cost(x=pts[:, 3:], y=pts[:, 3:], epsilon=0.1))
    assert abs(value - float(reference)) < 1e-4  # the references meet the default tol 1e-6 on costs up to 14


def test_early_stop_reports_the_true_error_on_every_backend(backend, rng):
    cost = rng.random((6, 7))
    with pytest.warns(softk.NotConvergedWarning):
        out = softk.sinkhorn(backend.asarray(cost, "float64"), epsilon=1e-3, max_iter=3, scaling=False)
    assert np.isfinite(float(out.error))
    assert abs(float(out.error) - _plan_error(backend.to_numpy(out.plan))) < 1e-9


@pytest.mark.parametrize("dtype, eps", [("float32", 1e-10), ("float64", 1e-20)])
@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_soft_topk_tends_to_the_hard_mask(backend, rng, dtype, eps, method):
    x = rng.normal(size=(3, 8))
    out = backend.to_numpy(softk.soft_topk(backend.asarray(x, dtype), 2, epsilon=eps, method=method))
    hard = np.zeros_like(x)
    np.put_along_axis(hard, np.argsort(-x, axis=-1)[:, :2], 1.0, axis=-1)
    np.testing.assert_array_equal(out, hard)


def test_hard_limit_shares_ties(backend):
    x = backend.asarray(np.array([3.0, 1.0, 3.0, 0.0]), "float64")
    np.testing.assert_array_equal(backend.to_numpy(softk.soft_topk(x, 1, epsilon=1e-30)), [0.5, 0.0, 0.5, 0.0])


@pytest.mark.parametrize("dtype, scale", [("float64", 1e155), ("float32", 1e19)])
def test_sorting_keeps_the_spread_of_huge_inputs(backend, dtype, scale):
    x = np.array([1.0, 2.0, 3.0, 0.5]) * scale
    ranks = backend.to_numpy(softk.soft_rank(backend.asarray(x, dtype), epsilon=1e-3))
    np.testing.assert_allclose(ranks, [2.0, 3.0, 4.0, 1.0], atol=0.05)
    ordered = backend.to_numpy(softk.soft_sort(backend.asarray(x, dtype), epsilon=1e-3)).astype(np.float64)
    assert np.all(np.diff(ordered) > 0) and np.all(np.isfinite(ordered))


def test_soft_rank_of_a_constant_row_has_a_bounded_gradient(backend):
    x = np.ones(5)
    fn = lambda s: softk.soft_rank(s, epsilon=1e-2)  # noqa: E731
    if backend.name in ("numpy", "array_api_strict"):
        _, pullback = softk.vjp(softk.soft_rank, backend.asarray(x, "float64"), epsilon=1e-2)
        (grad,) = pullback(backend.asarray(np.arange(5.0), "float64"))
    else:
        _, grad = backend.value_and_grad(fn, backend.asarray(x, "float64"), backend.asarray(np.arange(5.0), "float64"))
    assert np.all(np.abs(backend.to_numpy(grad)) < 1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: softk.sinkhorn(b.asarray(np.zeros((0, 5, 6)), "float64"), epsilon=0.1), "empty"),
        (lambda b: softk.sinkhorn(b.asarray(np.ones((5, 6)), "float64"), epsilon=5e-324), "epsilon must be at least"),
        (lambda b: softk.soft_sort(b.asarray(np.zeros((0, 5)), "float64")), "no entries"),
        (lambda b: softk.soft_rank(b.asarray(np.zeros((0, 5)), "float64")), "no entries"),
        (lambda b: softk.soft_topk_sorted(b.asarray(np.zeros((0, 5)), "float64"), 2), "no entries"),
        (lambda b: softk.soft_topk(b.asarray(np.zeros((0, 5)), "float64"), 2, method="sinkhorn"), "no entries"),
        (lambda b: softk.sinkhorn(b.asarray(np.ones((2, 5, 6)), "float64"), a=b.asarray(np.ones((3, 5)), "float64"), epsilon=0.1), "broadcast"),
    ],
)
def test_clear_errors(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)


def test_dtype_mismatches_are_named(backend, rng):
    cost = backend.asarray(rng.random((5, 6)), "float64")
    out = softk.sinkhorn(cost, epsilon=0.1)
    with pytest.raises(TypeError, match="v must have"):
        out.apply(backend.asarray(np.ones(6), "float32"))
    with pytest.raises(TypeError, match="init f"):
        softk.sinkhorn(cost, epsilon=0.1, init=(backend.asarray(np.zeros(5), "float32"), backend.asarray(np.zeros(6), "float32")))


def test_torch_meta_tensors_are_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="meta tensor"):
        softk.soft_topk(torch.ones(3, 5, device="meta"), 2)


def test_jit_nan_input_gives_nan_and_a_warning():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    with pytest.warns(softk.NotConvergedWarning):
        out = jax.jit(lambda s: softk.soft_topk(s, 2, method="sinkhorn"))(jnp.array([1.0, jnp.nan, 2.0]))
        out.block_until_ready()
    assert np.isnan(np.asarray(out)).any()


@pytest.mark.parametrize("backend_name", ["aot_eager", "inductor"])
def test_compiled_torch_warns_when_a_solve_stops_short(backend_name):
    """Under ``torch.compile(fullgraph=True)`` the flag is symbolic while tracing and Dynamo keeps
    no Python side effect of the op's forward: the warning is an operator in the graph, raised
    at run time on the calls that stop short, and only on those."""
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    cost = torch.asarray(np.random.default_rng(0).random((4, 6)), requires_grad=True)
    short = torch.compile(lambda c: softk.soft_topk(c, 2, epsilon=1e-3, method="sinkhorn", max_iter=3), fullgraph=True, backend=backend_name)
    with pytest.warns(softk.NotConvergedWarning, match="soft_topk's Sinkhorn solver did not converge"):
        short(cost).sum().backward()
    with pytest.warns(softk.NotConvergedWarning, match="sinkhorn_cost did not converge"):
        torch.compile(lambda c: softk.sinkhorn_cost(c, epsilon=1e-3, max_iter=3), fullgraph=True, backend=backend_name)(cost)
    full = torch.compile(lambda c: softk.soft_topk(c, 2, epsilon=0.1, method="sinkhorn"), fullgraph=True, backend=backend_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", softk.NotConvergedWarning)
        full(cost).sum().backward()
    with pytest.warns(softk.NotConvergedWarning):  # each call reads its own flag
        short(cost)


@pytest.mark.parametrize("backend_name", ["aot_eager"])
def test_compiled_torch_refuses_nan_and_inf_at_run_time(backend_name):
    """Under ``torch.compile(fullgraph=True)`` the values are symbolic while tracing: the check
    is an operator in the graph, so the compiled call raises eager mode's ``ValueError``. (That
    inductor keeps such an operator is tested with the convergence warning, the same mechanism.)"""
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    step = torch.compile(lambda x: softk.soft_topk(x, 2, epsilon=0.1), fullgraph=True, backend=backend_name)
    x = torch.asarray(np.random.default_rng(0).normal(size=(3, 6)))
    torch.testing.assert_close(step(x), softk.soft_topk(x, 2, epsilon=0.1))
    for bad, match in ((float("nan"), "x contains NaN"), (float("inf"), r"x contains \+-inf")):
        y = x.clone()
        y[1, 2] = bad
        with pytest.raises(ValueError, match=match):
            step(y)
    cost = torch.rand(4, 5, dtype=torch.float64)
    cost[0, 0] = float("nan")
    with pytest.raises(ValueError, match="cost contains NaN"):
        torch.compile(lambda c: softk.sinkhorn_cost(c, epsilon=0.1), fullgraph=True, backend=backend_name)(cost)


def test_float32_defaults_converge_on_an_online_problem(rng):
    x, y = rng.random((3000, 2)).astype(np.float32), rng.random((3000, 2)).astype(np.float32)
    out = softk.sinkhorn(x=x, y=y, epsilon=1e-2, online=True)  # warnings are errors here
    assert bool(out.converged) and int(out.n_iter) < 1000


def test_potentials_are_differentiable_gauge_fixed_and_integer_counted(backend, rng):
    cost = rng.random((4, 5))
    a = rng.random(4) + 0.5
    out = softk.sinkhorn(backend.asarray(cost, "float64"), a=backend.asarray(a, "float64"), epsilon=0.1, tol=1e-12)
    f, g = backend.to_numpy(out.f), backend.to_numpy(out.g)
    assert abs(f @ (a / a.sum()) - g.mean()) < 1e-10  # the gauge <f, a> = <g, b>
    assert "int" in str(out.n_iter.dtype)
    v = rng.normal(size=5)

    def g_of(c):
        return softk.sinkhorn(c, a=backend.asarray(a, "float64"), epsilon=0.1, tol=1e-13, max_iter=100_000).g

    fd = central_difference(backend, g_of, cost, v)
    if backend.name in ("numpy", "array_api_strict"):
        pytest.skip("f and g are attributes of a result: gradients through the framework's autograd")
    _, grad = backend.value_and_grad(g_of, backend.asarray(cost, "float64"), backend.asarray(v, "float64"))
    np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=1e-6)


def test_sinkhorn_output_passes_through_jit_and_vmap():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    cost = jnp.asarray(np.random.default_rng(0).random((3, 4, 5)))
    out = jax.jit(lambda c: softk.sinkhorn(c, epsilon=0.1))(cost)
    assert isinstance(out, softk.SinkhornOutput) and bool(out.converged)
    eager = softk.sinkhorn(cost, epsilon=0.1)
    np.testing.assert_allclose(np.asarray(out.plan), np.asarray(eager.plan), atol=1e-9)
    mapped = jax.vmap(lambda c: softk.sinkhorn(c, epsilon=0.1).cost)(cost)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager.cost), atol=1e-9)


@pytest.mark.parametrize("eps", [1e-9, 1e-12])
def test_soft_quantile_stays_in_the_data_range(backend, eps):
    x = np.random.default_rng(13).normal(size=(3, 20)) * 10 ** np.random.default_rng(13).uniform(-3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", softk.NotConvergedWarning)  # tiny epsilon: rounding may stop the solver
        q = backend.to_numpy(softk.soft_quantile(backend.asarray(x, "float64"), 0.95, epsilon=eps))
    assert np.all(q <= x.max(-1)) and np.all(q >= x.min(-1))


def test_sinkhorn_output_passes_through_torch_compile():
    """``sinkhorn`` and ``sinkhorn_cost`` compile as one graph (their loops are PyTorch's
    ``while_loop`` operator): the output type, its counters, and the eager values and gradient."""
    torch = pytest.importorskip("torch")
    cost = torch.asarray(np.random.default_rng(0).random((4, 5)))
    torch._dynamo.reset()
    out = torch.compile(lambda c: softk.sinkhorn(c, epsilon=0.1), backend="aot_eager", fullgraph=True)(cost)
    assert isinstance(out, softk.SinkhornOutput) and bool(out.converged) and not out.n_iter.is_floating_point()
    np.testing.assert_allclose(out.plan.numpy(), softk.sinkhorn(cost, epsilon=0.1).plan.numpy(), atol=1e-7)
    leaf = cost.clone().requires_grad_(True)
    value = torch.compile(lambda c: softk.sinkhorn_cost(c, epsilon=0.1), backend="aot_eager", fullgraph=True)(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    ref = softk.sinkhorn_cost(leaf, epsilon=0.1)
    (ref_grad,) = torch.autograd.grad(ref, leaf)
    np.testing.assert_allclose(float(value), float(ref), rtol=1e-9)
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("dtype, scale", [("float64", 1e155), ("float32", 1e19)])
def test_sorted_topk_refuses_scores_whose_squares_overflow(backend, dtype, scale):
    x = backend.asarray(np.array([1.0, 2.0, 3.0, 0.5]) * scale, dtype)
    with pytest.raises(ValueError, match="overflow"):
        softk.soft_topk_sorted(x, 2)


def test_float32_solve_below_the_rounding_floor_keeps_its_plan():
    """Regression: where float32's rounding of cost / epsilon (about 2e-3 here) is above ``tol``,
    the solver's plan (error ~2e-4) was thrown away for a log-domain restart from zero that ran
    out of iterations at error 0.28. Now the plan is kept, the error reported is the returned
    plan's, and the warning names the rounding."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 2)), 3 * rng.normal(size=(80, 2))
    cost = (((x[:, None] - y[None]) ** 2).sum(-1)).astype(np.float32)
    with pytest.warns(softk.NotConvergedWarning, match="rounding"):
        r = softk.sinkhorn(cost, epsilon=1e-2, max_iter=1000)
    recomputed = np.abs(r.plan.sum(1) - 1 / 60).sum() + np.abs(r.plan.sum(0) - 1 / 80).sum()
    assert float(r.error) < 1e-3 and int(r.n_iter) < 1000
    np.testing.assert_allclose(float(r.error), recomputed, rtol=1e-3)


def test_float32_stalled_solve_stops_before_its_scalings_drift():
    """Regression: at epsilon ~1e-4 of the cost's range in float32 the error stalls at the
    rounding floor (~2e-3 by iteration 500) while the scalings kept drifting from the kernel:
    by iteration 3000 the potentials' plan had infinite entries. A stage now stops after
    ``STALL`` iterations without progress; the plan stays finite and its error honest."""
    rng = np.random.default_rng(1)
    n, m = rng.integers(5, 120, size=2)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) * rng.uniform(0.3, 4)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1) * 10 ** rng.uniform(-3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", softk.NotConvergedWarning)
        r = softk.sinkhorn(cost.astype(np.float32), epsilon=0.0443, max_iter=3000)
    plan = r.plan.astype(np.float64)
    recomputed = np.abs(plan.sum(1) - 1 / n).sum() + np.abs(plan.sum(0) - 1 / m).sum()
    assert np.isfinite(plan).all() and float(r.error) < 1e-2
    np.testing.assert_allclose(float(r.error), recomputed, rtol=1e-3)
