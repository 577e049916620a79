"""Each framework's own gradient machinery around the core's VJP: PyTorch and JAX."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import softk

X = np.random.default_rng(3).normal(size=(3, 7))


class TestTorch:
    torch = pytest.importorskip("torch")

    def x(self, dtype="float64"):
        return self.torch.asarray(X, dtype=getattr(self.torch, dtype))

    @pytest.mark.parametrize("method", ["exact", "sinkhorn"])
    @pytest.mark.parametrize("axis", [-1, 0])
    def test_gradcheck(self, method, axis):
        x = self.x().requires_grad_(True)
        fn = lambda x: softk.soft_topk(x, 2, epsilon=0.1, axis=axis, method=method, tol=1e-12)  # noqa: E731
        assert self.torch.autograd.gradcheck(fn, (x,))

    def test_func_vmap_and_grad_match_loops(self):
        torch = self.torch
        weights = torch.arange(7.0, dtype=torch.float64)
        loss = lambda r: (softk.soft_topk(r, 3, epsilon=0.1) * weights).sum()  # noqa: E731
        batched = torch.func.vmap(torch.func.grad(loss))(self.x())
        looped = torch.stack([torch.func.grad(loss)(r) for r in self.x()])
        torch.testing.assert_close(batched, looped)
        values = torch.func.vmap(lambda r: softk.soft_topk(r, 3, epsilon=0.1))(self.x())
        torch.testing.assert_close(values, softk.soft_topk(self.x(), 3, epsilon=0.1))

    VMAPPED = {  # each maps one sample (no batch axis) to an array
        "soft_topk_sorted": lambda r: softk.soft_topk_sorted(r[0], 3, epsilon=0.1),
        "soft_rank": lambda r: softk.soft_rank(r[0], epsilon=0.1),
        "sinkhorn": lambda c: softk.sinkhorn(c, epsilon=0.1, tol=1e-12).f,
        "sinkhorn_plan": lambda c: softk.sinkhorn_plan(c, epsilon=0.1, tol=1e-12),
        "sinkhorn_divergence": lambda c: softk.sinkhorn_divergence(c, c[:3] + 0.3, epsilon=0.5, tol=1e-12),
        "ot_transfer_loss": lambda c: softk.ot_transfer_loss(c, 2.0 * c[:, :2] + 0.1, epsilon=0.5, tol=1e-12),
        "sparse_simplex_projection": lambda r: softk.sparse_simplex_projection(r[0], 3),
    }

    @pytest.mark.parametrize("name", sorted(VMAPPED))
    def test_func_vmap_of_value_and_grad_equals_a_loop(self, name):
        """torch.func.vmap runs the batch as one call of the core (a solve's error, iteration
        count and flag are the batch's): values and gradients equal one call per sample."""
        torch, fn = self.torch, self.VMAPPED[name]
        batch = torch.asarray(np.random.default_rng(4).uniform(size=(3, 4, 5)))
        torch.testing.assert_close(torch.func.vmap(fn)(batch), torch.stack([fn(b) for b in batch]), rtol=1e-9, atol=1e-11)
        if name == "sparse_simplex_projection":
            return  # no gradient
        w = torch.asarray(np.random.default_rng(5).normal(size=fn(batch[0]).shape))
        grad = torch.func.grad(lambda b: (fn(b) * w).sum())
        torch.testing.assert_close(torch.func.vmap(grad)(batch), torch.stack([grad(b) for b in batch]), rtol=1e-8, atol=1e-10)

    def test_func_vmap_of_sparse_ot_equals_the_batched_call(self):
        """Host code (the plan's repair) runs once per batch entry and the implicit backward's loop
        runs masked per entry (lax.while_loop's rule): the batched call's plan and gradient."""
        torch = self.torch
        batch = torch.asarray(np.random.default_rng(4).uniform(size=(3, 5, 6)))
        plan = lambda c: softk.sparse_ot(c, k=2, gamma=0.5).plan  # noqa: E731
        torch.testing.assert_close(torch.func.vmap(plan)(batch), plan(batch), rtol=1e-10, atol=1e-12)
        w = torch.asarray(np.random.default_rng(5).normal(size=(5, 6)))
        grad = torch.func.vmap(torch.func.grad(lambda c: (plan(c) * w).sum()))(batch)
        torch.testing.assert_close(grad, torch.func.grad(lambda c: (plan(c) * w).sum())(batch), rtol=1e-8, atol=1e-10)
        routing = torch.func.vmap(lambda z: softk.moe_route(z, 3).combine)(batch)
        torch.testing.assert_close(routing, softk.moe_route(batch, 3).combine, rtol=1e-10, atol=1e-12)

    def test_func_vmap_refuses_nan_and_inf_like_eager(self):
        torch = self.torch
        batch = torch.asarray(np.random.default_rng(4).normal(size=(3, 6)))
        for bad, message in ((float("nan"), "x contains NaN"), (float("inf"), "x contains \\+-inf")):
            scores = batch.clone()
            scores[1, 2] = bad
            with pytest.raises(ValueError, match=message):
                torch.func.vmap(lambda r: softk.soft_topk(r, 2))(scores)
        torch.func.vmap(lambda r: softk.soft_topk(r, 2))(batch)  # finite: no error

    def test_func_vmap_warns_when_the_batch_stops_short(self):
        torch = self.torch
        batch = torch.asarray(np.random.default_rng(4).uniform(size=(3, 4, 5)))
        with pytest.warns(softk.NotConvergedWarning, match="sinkhorn did not converge"):
            out = torch.func.vmap(lambda c: softk.sinkhorn(c, epsilon=1e-3, max_iter=3))(batch)
        assert not bool(out.converged.any()) and out.error.shape == (3,)

    def test_jacrev_matches_jacobian(self):
        torch = self.torch
        fn = lambda x: softk.soft_topk(x, 1, epsilon=0.1, axis=0)  # noqa: E731
        torch.testing.assert_close(torch.func.jacrev(fn)(self.x()), torch.autograd.functional.jacobian(fn, self.x()))

    def test_compile_fullgraph_is_quiet_and_equals_eager(self, tmp_path):
        """A user's script: softk imported first, a training step compiled as one graph (the solver
        loops are PyTorch's while_loop operator): nothing on stderr, the eager value and gradient.
        A fresh interpreter, since pytest resets the warning filters (the glue's among them)."""
        script = (
            "import softk, torch\n"
            "x = torch.randn(8, 20, dtype=torch.float64, requires_grad=True)\n"
            "w = torch.arange(160.0, dtype=torch.float64).reshape(8, 20)\n"
            "loss = lambda x: (softk.soft_topk(x, 3, epsilon=0.1) * w).square().sum()\n"
            "step = torch.compile(loss, fullgraph=True)\n"
            "value = step(x)\n"
            "(grad,) = torch.autograd.grad(value, x)\n"
            "ref = loss(x)\n"
            "(ref_grad,) = torch.autograd.grad(ref, x)\n"
            "torch.testing.assert_close(value, ref, rtol=1e-12, atol=0)\n"
            "torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)\n"
            "assert float(grad.abs().max()) > 0\n"
        )
        # from another folder: the installed package (the source folder lacks softk.backends)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]

    def test_compile_with_graph_breaks(self):
        """Operators whose loops are not traced yet (soft sort) still compile, around graph breaks."""
        torch = self.torch
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: softk.soft_sort(x, epsilon=0.1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # dynamo reports the graph breaks
            out = compiled(self.x())
        torch.testing.assert_close(out, softk.soft_sort(self.x(), epsilon=0.1))

    def test_fullgraph_refusal_says_which_loop_and_what_to_do(self):
        """fullgraph=True on an operator whose loop is not traced: Dynamo's error carries softk's
        message (not only "Could not guard on data-dependent expression")."""
        torch = self.torch
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: softk.soft_sort(x, epsilon=0.1), fullgraph=True)
        with pytest.raises(Exception, match="softk operator's solver loop is not traced") as info:
            compiled(self.x())
        assert "without fullgraph=True" in str(info.value)

    def test_inputs_requiring_grad_raise_no_warning(self):
        """Argument checks read values without converting autograd-tracked tensors to Python
        scalars (PyTorch warns about that)."""
        x = self.x().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for op in (lambda x: softk.soft_topk(x, 2), lambda x: softk.soft_topk_sorted(x, 2), softk.soft_sort):
                op(x).sum().backward()

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
    def test_half_precision_inputs_are_computed_in_float32(self, dtype):
        torch = self.torch
        x = self.x(dtype).requires_grad_(True)
        out = softk.soft_topk(x, 2, epsilon=0.1)
        assert out.dtype == x.dtype
        out.backward(torch.ones_like(out))
        assert x.grad.dtype == x.dtype and torch.isfinite(x.grad).all()
        ref = softk.soft_topk(self.x(dtype).float(), 2, epsilon=0.1)
        torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=0)

    def test_saved_state_is_linear_in_n(self):
        # No iteration tape: what backward keeps is O(n) per row (n x 2 plan for Sinkhorn).
        torch = self.torch
        x = torch.randn(4, 500, dtype=torch.float64, requires_grad=True)
        for method, per_entry in (("exact", 1), ("sinkhorn", 2)):
            out = softk.soft_topk(x, 5, epsilon=1e-2, method=method, max_iter=100_000)
            # the output itself is saved too (second derivatives rebuild the residuals from it): no new memory
            saved = [t for t in out.grad_fn.saved_tensors if t.data_ptr() != out.data_ptr()]
            per_row = [t for t in saved if t.numel() <= x.shape[0]]  # range and extreme: O(1) per row
            assert sum(t.numel() for t in saved) == x.numel() * (1 + per_entry) + sum(t.numel() for t in per_row)
            assert len(per_row) <= 3

    def test_non_leaf_inputs_are_not_modified(self):
        torch = self.torch
        x = self.x().requires_grad_(True)
        y = x * 1.0
        before = y.detach().clone()
        softk.soft_topk(y, 2, epsilon=0.1).sum().backward()
        torch.testing.assert_close(y.detach(), before)


class TestJax:
    jax = pytest.importorskip("jax")

    def x(self):
        return self.jax.numpy.asarray(X)

    @pytest.mark.parametrize("method", ["exact", "sinkhorn"])
    def test_check_grads(self, method):
        from jax.test_util import check_grads

        fn = lambda x: softk.soft_topk(x, 2, epsilon=0.1, method=method, tol=1e-12)  # noqa: E731
        check_grads(fn, (self.x(),), order=1, modes=["rev"])

    def test_jit_vmap_grad(self):
        jax, jnp = self.jax, self.jax.numpy
        weights = jnp.arange(7.0)
        loss = lambda r: (softk.soft_topk(r, 3, epsilon=0.05) * weights).sum()  # noqa: E731
        batched = jax.jit(jax.vmap(jax.grad(loss)))(self.x())
        looped = jnp.stack([jax.grad(loss)(r) for r in self.x()])
        np.testing.assert_allclose(batched, looped, atol=1e-12)
        np.testing.assert_allclose(jax.jit(lambda x: softk.soft_topk(x, 3))(self.x()), softk.soft_topk(self.x(), 3), atol=1e-14)

    def test_eager_grad_with_a_concrete_second_array(self):
        # a tracer has no device: the placement check must not compare it with a concrete array's
        jax, jnp = self.jax, self.jax.numpy
        x, y = jnp.asarray(X[:, :2]), jnp.asarray(X[:3, 2:4])
        grad = jax.grad(lambda x: softk.sinkhorn(x=x, y=y, epsilon=5.0).cost)(x)
        jitted = jax.jit(jax.grad(lambda x: softk.sinkhorn(x=x, y=y, epsilon=5.0).cost))(x)
        np.testing.assert_allclose(grad, jitted, atol=1e-12)

    def test_grads_finite_for_every_epsilon_in_float32(self):
        jax, jnp = self.jax, self.jax.numpy
        x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 1000)), dtype=jnp.float32)
        for eps in (1.0, 0.1, 1e-2, 1e-3, 1e-4):
            g = jax.jit(jax.grad(lambda x, eps=eps: (softk.soft_topk(x, 10, epsilon=eps) * jnp.arange(1000.0)).sum()))(x)
            assert g.dtype == jnp.float32 and bool(jnp.isfinite(g).all()), eps

    def test_non_convergence_is_reported_inside_jit(self):
        jax = self.jax
        fn = jax.jit(lambda x: softk.soft_topk(x, 2, epsilon=1e-3, method="sinkhorn", max_iter=10))
        with pytest.warns(softk.NotConvergedWarning):
            fn(self.x()).block_until_ready()

    def test_epsilon_must_be_static(self):
        jax = self.jax
        with pytest.raises(TypeError, match="epsilon must be a concrete Python float"):
            jax.jit(lambda x, e: softk.soft_topk(x, 2, epsilon=e))(self.x(), 0.1)
