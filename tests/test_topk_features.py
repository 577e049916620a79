"""Straight-through selection, soft top-p, epsilon in score units and second derivatives, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Op, central_difference

import softk
from softk.topp import soft_topp

SOFT = {"topk": (softk.soft_topk, 3), "sorted": (softk.soft_topk_sorted, 2)}


def _jax_once(backend, *variant):
    """JAX compiles each static configuration (seconds each): run it on the first variant only."""
    if backend.name == "jax" and any(variant):
        pytest.skip("JAX: one configuration covers the glue; the core is tested on the other backends")


def _grad(backend, op, x, v):
    return backend.value_and_grad(op, backend.asarray(x, "float64"), backend.asarray(v, "float64"))


# ---- straight-through ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["topk", "sorted"])
@pytest.mark.parametrize("largest", [True, False])
def test_straight_through_is_hard_forward_and_soft_gradient(backend, rng, which, largest):
    _jax_once(backend, not largest, which == "sorted")
    fn, k = SOFT[which]
    x = rng.normal(size=(2, 7))
    v = rng.normal(size=x.shape + ((k,) if which == "sorted" else ()))
    hard_out, hard_grad = _grad(backend, Op(fn, k, epsilon=0.2, largest=largest, straight_through=True), x, v)
    _, soft_grad = _grad(backend, Op(fn, k, epsilon=0.2, largest=largest), x, v)
    order = np.argsort(-x if largest else x, axis=-1, kind="stable")[:, :k]
    if which == "topk":
        expected = np.zeros_like(x)
        np.put_along_axis(expected, order, 1.0, axis=-1)
    else:
        expected = (order[:, None, :] == np.arange(x.shape[-1])[None, :, None]).astype(float)
    np.testing.assert_array_equal(backend.to_numpy(hard_out), expected)
    np.testing.assert_allclose(backend.to_numpy(hard_grad), backend.to_numpy(soft_grad), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("which", ["topk", "sorted"])
def test_straight_through_ties_go_to_the_lowest_index(backend, which):
    _jax_once(backend, which == "sorted")
    fn, _ = SOFT[which]
    x = np.array([[1.0, 3.0, 2.0, 3.0, 3.0, 0.0]])
    out = backend.to_numpy(fn(backend.asarray(x, "float64"), 2, epsilon=0.1, straight_through=True))
    if which == "topk":
        np.testing.assert_array_equal(out, [[0, 1, 0, 1, 0, 0]])
    else:
        np.testing.assert_array_equal(out.argmax(-2), [[1, 3]])
    if backend.name == "torch":  # torch.topk's tie order is unspecified (here it picks 1 and 4): same set without ties
        import torch

        y = torch.asarray(np.random.default_rng(0).normal(size=(3, 9)))
        mask = torch.zeros_like(y).scatter_(-1, torch.topk(y, 4).indices, 1.0)
        assert torch.equal(softk.soft_topk(y, 4, straight_through=True), mask)


def test_straight_through_below_the_hard_epsilon_has_zero_gradient(backend, rng):
    x = rng.normal(size=(1, 6))
    out, grad = _grad(backend, Op(softk.soft_topk, 2, epsilon=1e-20, straight_through=True), x, np.ones_like(x))
    assert backend.to_numpy(out).sum() == 2.0 and not backend.to_numpy(grad).any()


# ---- soft top-p ------------------------------------------------------------------------------


def _fractional_nucleus(z, p):
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    out = np.zeros_like(z)
    for row, (zr, pr) in enumerate(zip(z, pi)):
        mass = 0.0
        for i in np.argsort(-zr, kind="stable"):
            out[row, i] = min(1.0, max(0.0, (p - mass) / pr[i]))
            mass += pr[i]
    return out


@pytest.mark.parametrize("eps", [1.0, 0.1, 1e-3])
def test_topp_mass_is_exactly_p(backend, rng, eps):
    _jax_once(backend, True)  # JAX: the fractional-nucleus and gradient tests cover it
    z = rng.normal(size=(3, 40)) * 2.0
    a = backend.to_numpy(soft_topp(backend.asarray(z, "float64"), 0.8, epsilon=eps))
    pi = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose((pi * a).sum(-1), 0.8, rtol=0, atol=1e-13)
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_topp_tends_to_the_fractional_nucleus(backend, rng):
    z = rng.normal(size=(3, 12)) * 2.0
    errs = [np.abs(backend.to_numpy(soft_topp(backend.asarray(z, "float64"), 0.7, epsilon=e)) - _fractional_nucleus(z, 0.7)).max()
            for e in ((1e-1, 1e-9) if backend.name == "jax" else (1e-1, 1e-2, 1e-9))]
    assert all(b < a for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-9


def test_topp_straight_through_is_the_nucleus(backend):
    _jax_once(backend, True)
    z = np.log(np.array([[0.1, 0.5, 0.05, 0.3, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    out, grad = _grad(backend, Op(soft_topp, 0.7, epsilon=0.3, straight_through=True), z, np.arange(10.0).reshape(2, 5))
    np.testing.assert_array_equal(backend.to_numpy(out), [[0, 1, 0, 1, 0], [1, 1, 1, 1, 0]])
    _, soft = _grad(backend, Op(soft_topp, 0.7, epsilon=0.3), z, np.arange(10.0).reshape(2, 5))
    np.testing.assert_allclose(backend.to_numpy(grad), backend.to_numpy(soft), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("eps", [1.0, 0.1])
def test_topp_gradient_matches_central_differences(backend, rng, eps):
    _jax_once(backend, eps != 0.1)
    z, v = rng.normal(size=(2, 6)) * 1.5, rng.normal(size=(2, 6))
    op = Op(soft_topp, 0.6, epsilon=eps)
    _, grad = _grad(backend, op, z, v)
    fd = central_difference(backend, op, z, v)
    np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=2e-6 * max(1.0, np.abs(fd).max()))
    np.testing.assert_allclose(backend.to_numpy(grad).sum(-1), 0.0, atol=1e-12)  # shift-invariant


def test_topp_refuses_bad_arguments():
    z = np.zeros(4)
    for p in (0.0, 1.0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="p must"):
            soft_topp(z, p)
    with pytest.raises(TypeError, match="straight_through"):
        soft_topp(z, 0.5, straight_through=1)


# ---- epsilon in score units ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["topk", "sorted"])
@pytest.mark.parametrize("method", ["default", "sinkhorn"])
def test_scores_scale_is_shift_invariant_and_scale_equivariant(backend, rng, which, method):
    _jax_once(backend, method == "sinkhorn", which == "sorted")
    fn, k = SOFT[which]
    kw = {} if method == "default" else {"method": "sinkhorn", "tol": 1e-12}
    x = rng.normal(size=(2, 9))
    base = backend.to_numpy(fn(backend.asarray(x, "float64"), k, epsilon=0.3, scale="scores", **kw))
    shifted = backend.to_numpy(fn(backend.asarray(x + 25.0, "float64"), k, epsilon=0.3, scale="scores", **kw))
    scaled = backend.to_numpy(fn(backend.asarray(4.0 * x, "float64"), k, epsilon=1.2, scale="scores", **kw))
    np.testing.assert_allclose(shifted, base, atol=1e-9)
    np.testing.assert_allclose(scaled, base, atol=1e-9)
    paper = backend.to_numpy(fn(backend.asarray(x + 25.0, "float64"), k, epsilon=0.3, **kw))
    assert np.abs(paper - base).max() > 1e-2  # the default keeps the paper's normalisation


def test_scores_scale_is_a_sigmoid_of_the_scores(rng):
    x = rng.normal(size=8)
    a = softk.soft_topk(x, 3, epsilon=0.5, scale="scores")
    t = x[0] + 0.5 * np.log(1.0 / a[0] - 1.0)  # the threshold read off one entry
    np.testing.assert_allclose(a, 1.0 / (1.0 + np.exp(-(x - t) / 0.5)), atol=1e-12)


@pytest.mark.parametrize("which", ["topk", "sorted"])
def test_scores_scale_gradient_matches_central_differences(backend, rng, which):
    _jax_once(backend, which == "sorted")
    fn, k = SOFT[which]
    x = rng.normal(size=(2, 6))
    v = rng.normal(size=x.shape + ((k,) if which == "sorted" else ()))
    op = Op(fn, k, epsilon=0.4, scale="scores")
    _, grad = _grad(backend, op, x, v)
    fd = central_difference(backend, op, x, v)
    np.testing.assert_allclose(backend.to_numpy(grad), fd, atol=2e-6 * max(1.0, np.abs(fd).max()))


def test_scale_is_checked():
    with pytest.raises(ValueError, match="scale"):
        softk.soft_topk(np.zeros(4), 2, scale="units")


# ---- second derivatives (PyTorch) and epsilon as a tensor ---------------------------------------

CASES = [
    (softk.soft_topk, (3,), {"epsilon": 0.1}),
    (softk.soft_topk, (3,), {"epsilon": 0.2, "largest": False, "method": "sinkhorn", "tol": 1e-13}),
    (softk.soft_topk, (3,), {"epsilon": 0.5, "scale": "scores"}),
    (softk.soft_topk_sorted, (2,), {"epsilon": 0.1}),
    (soft_topp, (0.6,), {"epsilon": 0.3}),
]


@pytest.mark.parametrize(("fn", "args", "kw"), CASES)
def test_torch_second_derivatives_are_exact(fn, args, kw):
    torch = pytest.importorskip("torch")
    x = torch.asarray(np.random.default_rng(1).normal(size=(2, 6)), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: fn(x, *args, **kw), (x,))


def test_torch_hessian_matches_differences_of_the_gradient_and_torch_func():
    torch = pytest.importorskip("torch")
    x0 = torch.asarray(np.random.default_rng(2).normal(size=7), dtype=torch.float64)
    w = torch.asarray(np.random.default_rng(3).normal(size=7), dtype=torch.float64)

    def loss(x):
        return (softk.soft_topk(x, 3, epsilon=0.1) * w).sum()

    hess = torch.autograd.functional.hessian(loss, x0)
    grad = torch.func.grad(loss)
    h = 1e-6
    fd = torch.stack([(grad(x0 + h * e) - grad(x0 - h * e)) / (2 * h) for e in torch.eye(7, dtype=torch.float64)])
    torch.testing.assert_close(hess, fd, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hess, hess.T)
    torch.testing.assert_close(torch.func.jacrev(grad)(x0), hess)


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("soft_topk", lambda x: softk.soft_topk(x, 2, epsilon=0.1, straight_through=True)),
        ("soft_sort", lambda x: softk.soft_sort(x, epsilon=0.1)),
        ("soft_rank", lambda x: softk.soft_rank(x, epsilon=0.1)),
        ("soft_quantile", lambda x: softk.soft_quantile(x, [0.3, 0.7], epsilon=0.1)),
    ],
)
def test_torch_double_backward_refused_where_unsupported(name, fn):
    torch = pytest.importorskip("torch")
    x = torch.linspace(0.0, 1.0, 5, dtype=torch.float64).requires_grad_()
    out = fn(x)
    (g,) = torch.autograd.grad((out * torch.arange(out.shape[-1], dtype=torch.float64)).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"softk.{name} has no second derivative"):  # the function the user called
        g.sum().backward()


def test_epsilon_tensor_requiring_grad_is_refused():
    torch = pytest.importorskip("torch")
    eps = torch.tensor(0.1, requires_grad=True)
    x = torch.zeros(4)
    for fn in (softk.soft_topk, softk.soft_topk_sorted):
        with pytest.raises(TypeError, match="epsilon must be a Python float"):
            fn(x, 2, epsilon=eps)
    with pytest.raises(TypeError, match="epsilon must be a Python float"):
        soft_topp(x, 0.5, epsilon=eps)
    assert softk.soft_topk(x, 2, epsilon=torch.tensor(0.1)).shape == (4,)  # a plain tensor is still a float


def test_torch_vectorized_jacobian_works_or_says_why():
    torch = pytest.importorskip("torch")
    v = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian

    def topk(t):
        return softk.soft_topk(t, 2)

    torch.testing.assert_close(jac(topk, v, vectorize=True), jac(topk, v))
    torch.testing.assert_close(torch.func.jacrev(topk)(v), jac(topk, v))
    with pytest.raises(RuntimeError, match="cannot batch this operator"):
        jac(lambda t: softk.soft_sort(t), v, vectorize=True)


def test_nucleus_example_learns_quickly():
    pytest.importorskip("torch")
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "nucleus.py"
    spec = importlib.util.spec_from_file_location("nucleus_example", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    z0, reward = ex.problem(0)
    prior = ex.nucleus_reward(z0, reward)
    for method in ("soft top-p", "straight-through"):
        reached, z = ex.train(method, seed=0, steps=25)
        assert reached > prior + 0.05, method
    assert abs(ex.sampled_reward(z, reward, 20_000, 0) - ex.nucleus_reward(z, reward)) < 0.02


# ---- framework layers ------------------------------------------------------------------------


def test_torch_layers_match_the_operators_and_train():
    torch = pytest.importorskip("torch")
    from softk.backends.torch_layers import SinkhornDivergenceLoss, SoftTopK, SoftTopP, SpearmanLoss

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(SoftTopK(4, epsilon=0.2, scale="scores")(x), softk.soft_topk(x, 4, epsilon=0.2, scale="scores"))
    torch.testing.assert_close(SoftTopP(0.7, epsilon=0.2)(x), soft_topp(x, 0.7, epsilon=0.2))
    target = torch.randn(3, 12, dtype=torch.float64, generator=gen)
    pred = x.clone().requires_grad_()
    opt = torch.optim.Adam([pred], lr=0.1)
    loss_fn, first = SpearmanLoss(epsilon=0.01), None
    for _ in range(30):
        loss = loss_fn(pred, target)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    pts = torch.randn(20, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    div = SinkhornDivergenceLoss(epsilon=0.1)(pts, pts.detach() + 1.0)
    div.backward()
    assert float(div) > 0 and bool(pts.grad.isfinite().all())


def test_jax_layers_jit():
    jax = pytest.importorskip("jax")
    import functools

    import jax.numpy as jnp

    from softk.backends.jax_layers import spearman_loss

    loss = jax.jit(jax.value_and_grad(functools.partial(spearman_loss, epsilon=0.01)))
    value, grad = loss(jnp.array([[0.3, 0.1, 0.9, 0.5]]), jnp.array([[1.0, 2.0, 3.0, 4.0]]))
    assert 0.0 < float(value) < 2.0 and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


@pytest.mark.parametrize("name", ["soft_topk", "soft_topk_sinkhorn", "soft_topk_sorted", "soft_sort", "soft_topp", "sinkhorn_f"])
def test_torch_forward_mode_matches_reverse_mode(name):
    torch = pytest.importorskip("torch")
    fn = {
        "soft_topk": lambda t: softk.soft_topk(t, 3, epsilon=0.1),
        "soft_topk_sinkhorn": lambda t: softk.soft_topk(t, 3, epsilon=0.1, method="sinkhorn", tol=1e-12),
        "soft_topk_sorted": lambda t: softk.soft_topk_sorted(t, 2),
        "soft_sort": lambda t: softk.soft_sort(t),
        "soft_topp": lambda t: soft_topp(t, 0.6, epsilon=0.3),
        "sinkhorn_f": lambda t: softk.sinkhorn(x=t[..., None], y=t[..., None] ** 2, epsilon=0.5, tol=1e-12).f,  # counters too
    }[name]
    x = torch.asarray(np.random.default_rng(4).normal(size=(2, 6)))
    torch.testing.assert_close(torch.func.jacfwd(fn)(x), torch.autograd.functional.jacobian(fn, x))
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(),), check_forward_ad=True)


def test_torch_func_hessian():
    torch = pytest.importorskip("torch")
    w = torch.arange(6.0, dtype=torch.float64)
    x = torch.asarray(np.random.default_rng(5).normal(size=6))

    def loss(t):
        return (softk.soft_topk(t, 2, epsilon=0.1) * w).sum()

    torch.testing.assert_close(torch.func.hessian(loss)(x), torch.autograd.functional.hessian(loss, x))


def test_scores_scale_at_tiny_epsilon_is_the_hard_mask(backend):
    x = backend.asarray(np.array([[0.1, 3.0, -2.0, 1.0, 1.0, 0.5]]), "float64")
    for eps in (1e-12, 1e-30):
        np.testing.assert_allclose(backend.to_numpy(softk.soft_topk(x, 2, epsilon=eps, scale="scores")), [[0, 1, 0, 0.5, 0.5, 0]], atol=1e-12)
