"""The operators the demo tours: small float64 inputs and how to call each one.

Every case gives NumPy inputs (the arrays that are differentiated), a call
written against softk's public API that works on any backend's arrays, and,
for the operators that :func:`softk.vjp` accepts, the operator and arguments
that give NumPy and CuPy their pullback (``None`` for the composite
``sinkhorn_divergence`` and ``beam_search``, differentiated by PyTorch and
JAX autograd only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import softk
from softk.topp import soft_topp  # softk.soft_topp once exported

TOL = 1e-12  # Sinkhorn stopping tolerance, tight enough for finite differences in float64


@dataclass(frozen=True)
class Case:
    name: str
    shape: str  # the input, in words
    inputs: Callable[[np.random.Generator], tuple[np.ndarray, ...]]
    call: Callable[..., Any]
    vjp: Callable[..., tuple[Any, tuple, dict]] | None  # arrays -> (operator, args, kwargs) for softk.vjp


def _scores(shape: tuple[int, ...]) -> Callable[[np.random.Generator], tuple[np.ndarray, ...]]:
    return lambda rng: (rng.normal(size=shape),)


def _clouds(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    return rng.random((20, 2)), rng.random((15, 2))


def _apply_inputs(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    return (*_clouds(rng), rng.normal(size=(15, 3)))


LOGITS = np.array([[0.0, 2.0, 1.0, -1.0], [1.5, 0.0, 1.0, 0.2], [0.3, 0.1, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]])
LOG_PROBS = LOGITS - np.log(np.exp(LOGITS).sum(-1, keepdims=True))


def _beam(table: Any) -> Any:
    """Best-beam scores of a bigram model whose log-probability table is ``table`` (4 tokens)."""

    def step(tokens, state):
        lp = state if tokens is None else tokens @ table
        return lp, lp

    start = table[:1, :] * 1.0  # a batch of one, starting from token 0's row
    return softk.beam_search(step, start, 2, 3, epsilon=0.1).scores


SINKHORN = dict(epsilon=0.1, tol=TOL)

CASES = [
    Case("soft_topk", "4 x 50 scores, k = 5", _scores((4, 50)),
         lambda x: softk.soft_topk(x, 5, epsilon=0.1),
         lambda x: (softk.soft_topk, (x, 5), dict(epsilon=0.1))),
    Case("soft_topp", "4 x 50 logits, p = 0.9", _scores((4, 50)),
         lambda x: soft_topp(x, 0.9, epsilon=0.1),
         lambda x: (soft_topp, (x, 0.9), dict(epsilon=0.1))),
    Case("soft_topk_sorted", "4 x 30 scores, k = 3", _scores((4, 30)),
         lambda x: softk.soft_topk_sorted(x, 3, epsilon=0.05),
         lambda x: (softk.soft_topk_sorted, (x, 3), dict(epsilon=0.05))),
    Case("soft_sort", "4 x 20 scores", _scores((4, 20)),
         lambda x: softk.soft_sort(x, epsilon=0.05),
         lambda x: (softk.soft_sort, (x,), dict(epsilon=0.05))),
    Case("soft_rank", "4 x 20 scores", _scores((4, 20)),
         lambda x: softk.soft_rank(x, epsilon=0.05),
         lambda x: (softk.soft_rank, (x,), dict(epsilon=0.05))),
    Case("soft_quantile", "4 x 50 scores, q = 0.25, 0.5, 0.75", _scores((4, 50)),
         lambda x: softk.soft_quantile(x, [0.25, 0.5, 0.75], epsilon=0.05),
         lambda x: (softk.soft_quantile, (x, [0.25, 0.5, 0.75]), dict(epsilon=0.05))),
    Case("sinkhorn_cost", "clouds of 20 and 15 points", _clouds,
         lambda x, y: softk.sinkhorn_cost(x=x, y=y, **SINKHORN),
         lambda x, y: (softk.sinkhorn_cost, (), dict(x=x, y=y, **SINKHORN))),
    Case("sinkhorn_plan", "clouds of 20 and 15 points", _clouds,
         lambda x, y: softk.sinkhorn_plan(x=x, y=y, **SINKHORN),
         lambda x, y: (softk.sinkhorn_plan, (), dict(x=x, y=y, **SINKHORN))),
    Case("sinkhorn_apply", "clouds of 20 and 15 points, v 15 x 3", _apply_inputs,
         lambda x, y, v: softk.sinkhorn_apply(x=x, y=y, v=v, **SINKHORN),
         lambda x, y, v: (softk.sinkhorn_apply, (), dict(x=x, y=y, v=v, **SINKHORN))),
    Case("sinkhorn_divergence", "clouds of 20 and 15 points", _clouds,
         lambda x, y: softk.sinkhorn_divergence(x, y, **SINKHORN), None),
    Case("beam_search", "bigram table 4 x 4, beam 2, length 3", lambda rng: (LOG_PROBS.copy(),), _beam, None),
]
