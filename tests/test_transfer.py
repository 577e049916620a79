"""softk.transfer.ot_transfer_loss on every backend: value against a NumPy reference, gradients
against central differences, permutation invariance, batching, bad input; the torch Module under
torch.compile, the loss under jax.jit; the examples at a tiny size."""

from __future__ import annotations

import math
import pathlib
import sys
import warnings

import numpy as np
import pytest
from reference import sinkhorn_reference

import softk
from softk.transfer import ot_transfer_loss

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
# converged nearly to rounding, so differences measure the gradient; one parameter set (and one
# shape) for most tests, so that JAX compiles few functions
EXACT = dict(epsilon=0.5, tol=1e-10, max_iter=10_000)


def activations(rng, batch=7, p=4, q=3):
    return rng.normal(size=(batch, p)), rng.normal(size=(batch, q)) + 0.5


def loss_and_grads(backend, student, teacher, **kwargs):
    """``(loss, d loss / d student, d loss / d teacher)`` with the backend's own autograd."""
    s, t = backend.asarray(student, "float64"), backend.asarray(teacher, "float64")
    if backend.name == "torch":
        import torch

        s, t = s.requires_grad_(True), t.requires_grad_(True)
        out = ot_transfer_loss(s, t, **kwargs)
        return (backend.to_numpy(x) for x in (out, *torch.autograd.grad(out, (s, t))))
    if backend.name == "jax":
        import jax

        out, grads = jax.value_and_grad(lambda a, b: ot_transfer_loss(a, b, **kwargs), argnums=(0, 1))(s, t)
        return (np.asarray(x) for x in (out, *grads))
    out, pullback = softk.vjp(ot_transfer_loss, s, t, **kwargs)
    return (backend.to_numpy(x) for x in (out, *pullback(backend.xp.asarray(1.0, dtype=backend.xp.float64))))


def reference_loss(student, teacher, epsilon, normalize="standardize", debias=False):
    def neurons(x):
        if normalize == "none":
            return x.T
        if normalize == "batch":
            return x.T / math.sqrt(len(x))
        c = x - x.mean(0)
        return (c / np.sqrt((c**2).mean(0) + 1e-5)).T / math.sqrt(len(x))

    def ot(u, v):
        cost = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        a, b = np.full(len(u), 1 / len(u)), np.full(len(v), 1 / len(v))
        plan = sinkhorn_reference(cost, a, b, epsilon, n_iter=2000)
        return (plan * cost).sum() + epsilon * (plan * np.log(plan / np.outer(a, b))).sum()

    s, t = neurons(student), neurons(teacher)
    return ot(s, t) - 0.5 * (ot(s, s) + ot(t, t)) if debias else ot(s, t)


@pytest.mark.parametrize("normalize", ["batch", "none"])
@pytest.mark.parametrize("debias", [False, True])
def test_other_normalisations_match_reference(rng, normalize, debias):
    student, teacher = activations(rng)
    kwargs = {**EXACT, "epsilon": 0.5 if normalize == "batch" else 4.0}  # raw costs are ~ B times larger
    out = ot_transfer_loss(student, teacher, normalize=normalize, debias=debias, **kwargs)
    np.testing.assert_allclose(out, reference_loss(student, teacher, kwargs["epsilon"], normalize, debias), rtol=1e-9)


def central_differences(student, teacher, **kwargs):
    def f(s, t):
        return float(ot_transfer_loss(s, t, **kwargs))

    h, grads = 1e-6, []
    for which, x in enumerate((student, teacher)):
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[idx] = h
            plus, minus = [student, teacher], [student, teacher]
            plus[which], minus[which] = x + e, x - e
            fd[idx] = (f(*plus) - f(*minus)) / (2 * h)
        grads.append(fd)
    return grads


@pytest.mark.parametrize("debias", [False, True])
def test_value_and_gradients_match_reference_and_central_differences(backend, rng, debias):
    student, teacher = activations(rng)
    loss, grad_s, grad_t = loss_and_grads(backend, student, teacher, debias=debias, **EXACT)
    assert loss.shape == ()
    np.testing.assert_allclose(loss, reference_loss(student, teacher, 0.5, debias=debias), rtol=1e-9)
    fd_s, fd_t = central_differences(student, teacher, debias=debias, **EXACT)
    np.testing.assert_allclose(grad_s, fd_s, atol=1e-7)
    np.testing.assert_allclose(grad_t, fd_t, atol=1e-7)


@pytest.mark.parametrize("normalize,debias", [("batch", False), ("none", True)])
def test_gradients_of_other_normalisations(rng, normalize, debias):
    student, teacher = activations(rng)
    kwargs = {**EXACT, "epsilon": 0.5 if normalize == "batch" else 4.0, "normalize": normalize, "debias": debias}
    out, pullback = softk.vjp(ot_transfer_loss, student, teacher, **kwargs)
    for grad, fd in zip(pullback(np.ones(())), central_differences(student, teacher, **kwargs)):
        np.testing.assert_allclose(grad, fd, atol=1e-6)


def test_invariant_to_permuting_neurons_where_l2_is_not(backend, rng):
    student, teacher = activations(rng)
    perm_s, perm_t = rng.permutation(4), rng.permutation(3)
    loss, grad_s, _ = loss_and_grads(backend, student, teacher, **EXACT)
    loss_p, grad_s_p, _ = loss_and_grads(backend, student[:, perm_s], teacher[:, perm_t], **EXACT)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-10)
    np.testing.assert_allclose(grad_s_p, grad_s[:, perm_s], atol=1e-10)  # the gradient permutes with the neurons
    same_width = teacher[:, [0, 1, 2, 0]]
    l2 = ((student - same_width) ** 2).mean()
    assert abs(((student[:, perm_s] - same_width) ** 2).mean() - l2) > 1e-2


def test_permuted_copy_is_a_minimiser(backend, rng):
    """A permuted, rescaled and shifted copy of the teacher has zero divergence and zero gradient;
    a different layer does not."""
    student, teacher = activations(rng)
    copy = 3.0 * teacher[:, [2, 0, 1]] + 1.0
    loss, grad_s, _ = loss_and_grads(backend, copy, teacher, debias=True, **EXACT)
    other, grad_other, _ = loss_and_grads(backend, student[:, :3], teacher, debias=True, **EXACT)
    assert abs(float(loss)) < 1e-9 and float(other) > 0.1
    assert np.abs(grad_s).max() < 1e-6 < 1e-3 < np.abs(grad_other).max()


def test_layers_of_different_widths_and_leading_batch_dimensions(backend, rng):
    student, teacher = rng.normal(size=(2, 8, 3)), rng.normal(size=(2, 8, 11))
    out = ot_transfer_loss(backend.asarray(student, "float64"), backend.asarray(teacher, "float64"), **EXACT)
    assert backend.to_numpy(out).shape == (2,)
    for i in range(2):
        single = ot_transfer_loss(backend.asarray(student[i], "float64"), backend.asarray(teacher[i], "float64"), **EXACT)
        np.testing.assert_allclose(backend.to_numpy(out)[i], backend.to_numpy(single), rtol=1e-10)


def test_float32_keeps_dtype(backend, rng):
    student, teacher = activations(rng, batch=32, p=16, q=24)
    out = ot_transfer_loss(backend.asarray(student, "float32"), backend.asarray(teacher, "float32"), epsilon=0.05)
    assert out.dtype == backend.dtype("float32")
    np.testing.assert_allclose(backend.to_numpy(out), reference_loss(student, teacher, 0.05), rtol=1e-4)


def test_not_converged_warns(rng):
    student, teacher = activations(rng, batch=20, p=30, q=30)
    with pytest.warns(softk.NotConvergedWarning):
        ot_transfer_loss(student, teacher, epsilon=1e-3, max_iter=5)


@pytest.mark.parametrize(
    "student,teacher,kwargs,error,match",
    [
        (np.zeros((0, 3)), np.zeros((0, 4)), {}, ValueError, "empty batch"),
        (np.ones((5, 3)), np.ones((6, 3)), {}, ValueError, "same batch"),
        (np.ones((5, 0)), np.ones((5, 3)), {}, ValueError, "no neurons"),
        (np.ones(5), np.ones((5, 3)), {}, ValueError, "student must have shape"),
        (np.array([[1.0, np.nan]] * 3), np.ones((3, 2)), {}, ValueError, "student contains NaN"),
        (np.ones((3, 2)), np.array([[np.nan, 1.0]] * 3), {}, ValueError, "teacher contains NaN"),
        (np.ones((3, 2)), np.ones((3, 2), dtype=np.float32), {}, TypeError, "dtype"),
        (np.ones((3, 2), dtype=int), np.ones((3, 2)), {}, TypeError, "student"),
        ([[1.0]], np.ones((1, 2)), {}, TypeError, "student must be an array"),
        (np.ones((3, 2)), np.ones((3, 2)), dict(epsilon=0.0), ValueError, "epsilon"),
        (np.ones((3, 2)), np.ones((3, 2)), dict(normalize="l2"), ValueError, "normalize"),
        (np.ones((3, 2)), np.ones((3, 2)), dict(cost="cosine"), ValueError, "cost"),
    ],
)
def test_bad_input(student, teacher, kwargs, error, match):
    with pytest.raises(error, match=match):
        ot_transfer_loss(student, teacher, **{"epsilon": 0.1, **kwargs})


def test_torch_module_in_a_compiled_training_step():
    torch = pytest.importorskip("torch")
    from softk.backends.torch_transfer import OTTransferLoss

    torch.manual_seed(0)
    layer, head = torch.nn.Linear(10, 16), torch.nn.Linear(16, 3)
    loss_fn = OTTransferLoss(0.05, weight=2.0)
    x, y, teacher = torch.randn(64, 10), torch.randint(0, 3, (64,)), torch.randn(64, 12)

    def step(x, y, teacher):
        h = torch.relu(layer(x))
        return torch.nn.functional.cross_entropy(head(h), y) + loss_fn(h, teacher)

    eager = step(x, y, teacher)
    grads = torch.autograd.grad(eager, list(layer.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # graph-break chatter: the loss runs eagerly
        # aot_eager: Dynamo and AOT autograd around the loss, without Inductor's code generation (slow here)
        compiled = torch.compile(step, backend="aot_eager")(x, y, teacher)
    compiled_grads = torch.autograd.grad(compiled, list(layer.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert "weight=2.0" in repr(loss_fn)


def test_jax_jit_grad_matches_eager(rng):
    jax = pytest.importorskip("jax")
    student, teacher = (jax.numpy.asarray(a) for a in activations(rng, batch=16, p=6, q=9))

    def loss(s, t):
        return ot_transfer_loss(s, t, epsilon=0.1, tol=1e-9)

    jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(student, teacher)
    eager = jax.value_and_grad(loss, argnums=(0, 1))(student, teacher)
    for a, b in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-8)


@pytest.fixture
def example():
    pytest.importorskip("sklearn")
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(EXAMPLES))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: extra threads only contend (minutes on a loaded 2-core machine)
    try:
        import ot_distillation

        yield ot_distillation
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(EXAMPLES))


def test_distillation_example_runs_at_a_tiny_size(example):
    tiny = dict(labelled=50, steps=40, teacher_steps=60, transfer_batch=64)
    for method in ("labels", "l2", "ot"):
        assert example.distillation(0, method, **tiny) > 0.5  # chance is 0.1


def test_inductive_transfer_example_runs_at_a_tiny_size(example):
    tiny = dict(shots=3, steps=40, teacher_steps=60)
    assert example.inductive_transfer(0, 0.0, **tiny) > 0.4  # chance is 0.2
    assert example.inductive_transfer(0, 1.0, fine_tune=True, debias=True, **tiny) > 0.4
