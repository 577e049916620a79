"""asv benchmarks: the Sinkhorn divergence's value and gradient, softk against GeomLoss and OTT-JAX.

Problem: two clouds of ``n`` uniform points in the unit square (seed 0),
float64, squared Euclidean cost, ``epsilon = 1e-2``; value of
``S(x, y) = W(x, y) - (W(x, x) + W(y, y)) / 2`` and its gradient in ``x``.

``impl``:

* ``softk_torch``: ``softk.sinkhorn_divergence(x, y, epsilon)`` and ``.backward()``
  (row-marginal tolerance 1e-6, the default);
* ``softk_jax``: the same under ``jax.jit(jax.value_and_grad(...))``;
* ``geomloss``: ``SamplesLoss("sinkhorn", p=2, blur=sqrt(epsilon / 2), scaling=0.9,
  debias=True, backend="tensorized")`` (its cost is ``|x - y|^2 / 2`` and its
  regularisation ``blur^p``, so this is the same problem up to a factor 2);
* ``ott``: ``ott.tools.sinkhorn_divergence.sinkdiv(x, y, epsilon=epsilon)``
  under ``jax.jit(jax.value_and_grad(...))``, with a Sinkhorn threshold of 1e-6.

Cases whose library is missing raise ``NotImplementedError`` (asv: n/a).
"""

from __future__ import annotations

import importlib.util

import numpy as np

import softk

EPSILON = 1e-2
IMPLS = ["softk_torch", "softk_jax", "geomloss", "ott"]
NS = [100, 1_000]
_CACHE: dict = {}


def _require(*modules: str) -> None:
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise NotImplementedError(f"{name} is not installed")


def _clouds(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 2)), rng.random((n, 2))


def build(impl: str, n: int):
    """A zero-argument callable returning ``(value, gradient)``, or ``NotImplementedError``."""
    x_np, y_np = _clouds(n)
    if impl in ("softk_torch", "geomloss"):
        _require("torch", *(("geomloss",) if impl == "geomloss" else ()))
        import torch

        x, y = torch.asarray(x_np), torch.asarray(y_np)
        if impl == "softk_torch":
            loss = lambda x: softk.sinkhorn_divergence(x, y, epsilon=EPSILON)
        else:
            from geomloss import SamplesLoss

            samples_loss = SamplesLoss("sinkhorn", p=2, blur=(EPSILON / 2) ** 0.5, scaling=0.9, debias=True,
                                       backend="tensorized")
            loss = lambda x: samples_loss(x, y)

        def torch_value_and_grad():
            leaf = x.clone().requires_grad_(True)
            value = loss(leaf)
            (grad,) = torch.autograd.grad(value, leaf)
            return value.detach(), grad

        return torch_value_and_grad

    _require("jax", *(("ott",) if impl == "ott" else ()))
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    if impl == "softk_jax":
        loss = lambda x: softk.sinkhorn_divergence(x, y, epsilon=EPSILON)
    else:
        from ott.tools.sinkhorn_divergence import sinkdiv

        loss = lambda x: sinkdiv(x, y, epsilon=EPSILON, solve_kwargs={"threshold": 1e-6})[0]
    compiled = jax.jit(jax.value_and_grad(loss)).lower(x).compile()
    return lambda: jax.block_until_ready(compiled(x))


def prepared(impl: str, n: int):
    key = (impl, n)
    if key not in _CACHE:
        try:
            call = build(impl, n)
            call()  # warm up
        except NotImplementedError as exc:
            call = exc
        _CACHE[key] = call
    if isinstance(_CACHE[key], NotImplementedError):
        raise _CACHE[key]
    return _CACHE[key]


class DivergenceValueAndGrad:
    """Sinkhorn divergence value + gradient in ``x``: softk (PyTorch, JAX) against GeomLoss and OTT-JAX."""

    params = (IMPLS, NS)
    param_names = ["impl", "n"]
    number = 0
    repeat = (1, 5, 2.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 300.0

    def setup(self, impl, n):
        self.call = prepared(impl, n)

    def time_value_and_grad(self, impl, n):
        self.call()

    def peakmem_value_and_grad(self, impl, n):
        self.call()

    def track_value(self, impl, n):
        """The divergence each library returns (GeomLoss's is half of softk's, by its cost convention)."""
        return float(self.call()[0])


if __name__ == "__main__":
    import time

    for n in NS:
        for impl in IMPLS:
            try:
                call = prepared(impl, n)
            except NotImplementedError as exc:
                print(f"{impl:12} {n:6} skipped: {exc}")
                continue
            start = time.perf_counter()
            value, _ = call()
            print(f"{impl:12} {n:6} {1e3 * (time.perf_counter() - start):9.1f} ms  S = {float(value):.6f}", flush=True)
