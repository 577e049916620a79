"""One fixture over every installed backend: NumPy, PyTorch, JAX (float64), array-api-strict, CuPy (GPU only).

Each ``Backend`` converts NumPy data in and out and computes gradients with the
framework's *own* autograd (torch.autograd, jax.grad) or with ``softk.vjp``
where the library has none, so the tests exercise each registration path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# One thread per framework in each pytest worker: the frameworks' own thread pools on top of
# ``pytest -n auto`` oversubscribe the cores (a PyTorch training test ran 20x slower on two busy
# cores). Set before NumPy, PyTorch or JAX start their pools; a caller's own setting wins.
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
if "torch" in sys.modules:  # imported already (by a plugin): its pool has started
    sys.modules["torch"].set_num_threads(1)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import softk  # noqa: E402

BACKENDS = ["numpy", "torch", "jax", "array_api_strict", "cupy"]


def _cupy_usable() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # CuPy imports without a GPU but cannot run
        return False


if importlib.util.find_spec("jax") is not None:
    import jax

    jax.config.update("jax_enable_x64", True)


@dataclass
class Backend:
    name: str
    xp: Any
    asarray: Callable[[np.ndarray, str], Any]
    to_numpy: Callable[[Any], np.ndarray]
    value_and_grad: Callable  # (fn, x, cotangent) -> (fn(x), d<cotangent, fn(x)>/dx), all backend arrays

    def dtype(self, name: str) -> Any:
        return getattr(self.xp, name)


def _numpy_like(name: str, xp: Any, to_numpy: Callable) -> Backend:
    def value_and_grad(fn, x, v):
        out, pullback = softk.vjp(fn.op_fn, x, *fn.args, **fn.kwargs)
        return out, pullback(v)[0]

    return Backend(name, xp, lambda a, dt: xp.asarray(a, dtype=getattr(xp, dt)), to_numpy, value_and_grad)


def make_backend(name: str) -> Backend:
    if name == "numpy":
        return _numpy_like("numpy", np, np.asarray)
    if name == "array_api_strict":
        import array_api_strict as xps

        return _numpy_like(name, xps, lambda a: np.asarray(a))
    if name == "cupy":
        import cupy

        return _numpy_like(name, cupy, cupy.asnumpy)
    if name == "torch":
        import torch

        def value_and_grad(fn, x, v):
            x = x.detach().clone().requires_grad_(True)
            out = fn(x)
            (grad,) = torch.autograd.grad(out, x, v)
            return out.detach(), grad

        return Backend(
            name,
            torch,
            lambda a, dt: torch.asarray(np.asarray(a), dtype=getattr(torch, dt)),
            lambda a: a.detach().cpu().numpy(),
            value_and_grad,
        )
    if name == "jax":
        import jax
        import jax.numpy as jnp

        def value_and_grad(fn, x, v):
            out, pullback = jax.vjp(fn, x)
            return out, pullback(v)[0]

        return Backend(name, jnp, lambda a, dt: jnp.asarray(a, dtype=getattr(jnp, dt)), np.asarray, value_and_grad)
    raise ValueError(name)


def _params():
    for name in BACKENDS:
        module = "array_api_strict" if name == "array_api_strict" else name
        if importlib.util.find_spec(module) is None:
            yield pytest.param(name, marks=pytest.mark.skip(reason=f"{name} not installed"))
        elif name == "cupy" and not _cupy_usable():
            yield pytest.param(name, marks=pytest.mark.skip(reason="CuPy needs a CUDA GPU"))
        else:
            yield pytest.param(name)


@pytest.fixture(params=list(_params()))
def backend(request) -> Backend:
    return make_backend(request.param)


class Op:
    """A softk call with its non-array arguments bound: ``Op(softk.soft_topk, 3, epsilon=0.1)(x)``."""

    def __init__(self, op_fn, *args, **kwargs):
        self.op_fn, self.args, self.kwargs = op_fn, args, kwargs

    def __call__(self, x):
        return self.op_fn(x, *self.args, **self.kwargs)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def central_difference(backend: Backend, op: Callable, x: np.ndarray, v: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """``d <v, op(x)> / dx`` by central differences in float64, one entry of ``x`` at a time."""
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        plus = backend.to_numpy(op(backend.asarray(x + e, "float64")))
        minus = backend.to_numpy(op(backend.asarray(x - e, "float64")))
        fd[idx] = ((plus - minus) * v).sum() / (2 * h)
    return fd
