"""Mixture-of-experts routing as sparsity-constrained OT (docs/sparse_ot.md).

Tokens (rows, mass 1 each) are transported to experts (columns, mass
``tokens / experts`` each: a balanced load) under the cost ``-softmax(logits)``
with :func:`softk.sparse_ot.sparse_ot`:

* ``per="expert"``: at most ``capacity`` tokens per expert (the columns are sparse);
* ``per="token"``: at most ``capacity`` experts per token (the problem is transposed).

The plan is the combine weights (differentiable in the logits, through the
plan's implicit VJP and the softmax); its support is the dispatch mask. A
token's combine weights sum to one where the marginals are met. Eager calls
repair the plan where the cardinality constraint binds (tight capacities) or
the step budget runs out; under JAX tracing (no repair) the plan can fall short
of them there, and ``1 - sum`` is the token mass that was dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from ._validate import check_choice, check_int, check_positive_float, namespace_of
from ._warnings import NotConvergedWarning
from ._xp import logsumexp
from .sparse_ot import MarginalGapWarning, sparse_ot

__all__ = ["moe_route", "Routing"]


@dataclass(frozen=True)
class Routing:
    """Result of :func:`moe_route`, arrays of shape (..., tokens, experts) unless stated.

    Attributes
    ----------
    combine : array
        Weight of each expert's output for each token (the transport plan); differentiable.
    dispatch : array
        1 where a token is sent to an expert, 0 elsewhere (the plan's support; no gradient).
    dropped : array (..., tokens)
        Token mass not routed, ``1 - sum(combine, axis=-1)``, clipped at 0.
    """

    combine: Any
    dispatch: Any
    dropped: Any


def moe_route(logits: Any, capacity: int, *, gamma: float = 0.1, per: str = "expert", max_iter: int = 30) -> Routing:
    """Route tokens to experts by OT with at most ``capacity`` nonzeros per expert (or per token).

    Parameters
    ----------
    logits : array (..., tokens, experts)
        Router scores; the cost is ``-softmax(logits)`` over experts.
    capacity : int
        ``per="expert"``: tokens an expert may take (``capacity * experts >= tokens``);
        ``per="token"``: experts a token may use (``1 <= capacity <= experts``).
    gamma : float
        Quadratic regularisation of the plan (larger spreads tokens over more experts).
    per : {"expert", "token"}
    max_iter : int
        Solver steps (:func:`softk.sparse_ot.sparse_ot`): a fixed budget per call, without
        warnings; the routing is then approximate and ``dropped`` reports the shortfall.

    Returns
    -------
    Routing

    Examples
    --------
    >>> import numpy as np
    >>> from softk.moe import moe_route
    >>> logits = np.array([[2.0, 0.0], [1.5, 0.0], [1.0, 0.0], [0.0, 3.0]])
    >>> r = moe_route(logits, capacity=2)   # 4 tokens, 2 experts, at most 2 tokens each
    >>> r.dispatch.tolist()
    [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    >>> r.dispatch.sum(axis=0).tolist(), bool(r.dropped.max() < 1e-9)
    ([2.0, 2.0], True)
    """
    xp = namespace_of(logits=logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (..., tokens, experts), got {tuple(logits.shape)}")
    tokens, experts = logits.shape[-2:]
    per = check_choice("per", per, ("expert", "token"))
    if per == "expert":
        capacity = check_int("capacity", capacity, 1, tokens)
        if capacity * experts < tokens:
            raise ValueError(
                f"capacity * experts must be >= tokens to route every token, got {capacity} * {experts} < {tokens}"
            )
    else:
        capacity = check_int("capacity", capacity, 1, experts)
    gamma = check_positive_float("gamma", gamma)
    cost = -xp.exp(logits - logsumexp(xp, logits, axis=-1, keepdims=True))
    dtype, dev = logits.dtype, device(logits)
    ones = xp.ones((tokens,), dtype=dtype, device=dev)
    load = xp.full((experts,), tokens / experts, dtype=dtype, device=dev)
    with warnings.catch_warnings():
        # a fixed step budget, and tight capacities: the shortfall is reported as ``dropped``
        warnings.simplefilter("ignore", MarginalGapWarning)
        warnings.simplefilter("ignore", NotConvergedWarning)
        if per == "expert":
            plan = sparse_ot(cost, ones, load, k=capacity, gamma=gamma, max_iter=max_iter).plan
        else:
            plan = xp.matrix_transpose(
                sparse_ot(xp.matrix_transpose(cost), load, ones, k=capacity, gamma=gamma, max_iter=max_iter).plan
            )
    dispatch = xp.astype(plan > 0.0, dtype)
    dropped = xp.clip(1.0 - xp.sum(plan, axis=-1), min=0.0)
    return Routing(combine=plan, dispatch=dispatch, dropped=dropped)
