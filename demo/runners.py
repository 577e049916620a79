"""One runner per installed framework: convert NumPy data in and out, and take a
forward + backward pass with that framework's own autograd (``softk.vjp`` where
the library has none)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import softk

from .cases import Case


@dataclass
class Runner:
    name: str
    asarray: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    # (case, arrays, cotangent) -> (output, gradients of <cotangent, output> for each array), or None
    value_and_grad: Callable[[Case, tuple, Any], tuple[Any, tuple] | None]
    sync: Callable[[Any], None] = lambda a: None


def _vjp_runner(name: str, xp: Any, to_numpy: Callable, sync: Callable = lambda a: None) -> Runner:
    def value_and_grad(case, arrays, v):
        if case.vjp is None:  # a composite operator: gradients through torch/JAX autograd only
            return None
        op, args, kwargs = case.vjp(*arrays)
        out, pullback = softk.vjp(op, *args, **kwargs)
        return out, tuple(pullback(v))

    return Runner(name, lambda a: xp.asarray(a), to_numpy, value_and_grad, sync)


def _torch() -> Runner:
    import torch

    def value_and_grad(case, arrays, v):
        leaves = [a.detach().requires_grad_(True) for a in arrays]
        out = case.call(*leaves)
        return out.detach(), torch.autograd.grad(out, leaves, v)

    return Runner("torch", torch.asarray, lambda a: a.detach().cpu().numpy(), value_and_grad)


def _jax() -> Runner:
    import jax

    jax.config.update("jax_enable_x64", True)
    compiled: dict = {}

    def value_and_grad(case, arrays, v):
        if case.name not in compiled:
            def fn(arrays, v):
                out, pullback = jax.vjp(case.call, *arrays)
                return out, pullback(v)

            compiled[case.name] = jax.jit(fn)
        return compiled[case.name](tuple(arrays), v)

    return Runner("jax (jit)", jax.numpy.asarray, np.asarray, value_and_grad, jax.block_until_ready)


def _strict() -> Runner:
    import array_api_strict

    return _vjp_runner("array-api-strict", array_api_strict, np.asarray)


def _cupy() -> Runner | None:
    import cupy

    if not cupy.is_available():
        return None
    return _vjp_runner("cupy", cupy, cupy.asnumpy, lambda a: cupy.cuda.Device().synchronize())


def installed_runners() -> tuple[list[Runner], list[str]]:
    """The runners for every importable framework, and a note for each one skipped."""
    runners, skipped = [_vjp_runner("numpy", np, np.asarray)], []
    for module, make in (("torch", _torch), ("jax", _jax), ("array_api_strict", _strict), ("cupy", _cupy)):
        if importlib.util.find_spec(module) is None:
            skipped.append(f"{module}: not installed")
            continue
        try:
            runner = make()
        except Exception as exc:  # e.g. CuPy without a usable CUDA driver
            skipped.append(f"{module}: {type(exc).__name__}: {exc}")
            continue
        if runner is None:
            skipped.append(f"{module}: no GPU available")
        else:
            runners.append(runner)
    return runners, skipped
