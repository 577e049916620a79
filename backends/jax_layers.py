"""Plain JAX functions over softk's operators, ready for ``jax.jit`` (settings are static keywords).

The same layers as :mod:`softk.backends.torch_layers`, as functions: bind the
settings with ``functools.partial`` and ``jax.jit`` the result; no numerics here.

>>> import functools, jax, jax.numpy as jnp
>>> from softk.backends.jax_layers import spearman_loss
>>> loss = jax.jit(functools.partial(spearman_loss, epsilon=0.01))
>>> float(loss(jnp.array([[0.1, 0.5, 0.9]]), jnp.array([[1.0, 2.0, 3.0]]))) < 1e-3
True
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

import softk
from softk.topp import soft_topp

__all__ = ["soft_topk", "soft_topp", "sinkhorn_divergence_loss", "spearman_loss"]

soft_topk = softk.soft_topk


def sinkhorn_divergence_loss(x: Any, y: Any, a: Any = None, b: Any = None, *, epsilon: float = 0.1, **options: Any) -> Any:
    """Debiased Sinkhorn divergence (:func:`softk.sinkhorn_divergence`), averaged over batch dimensions."""
    return jnp.mean(softk.sinkhorn_divergence(x, y, a, b, epsilon=epsilon, **options))


def spearman_loss(prediction: Any, target: Any, *, epsilon: float = 0.01, **options: Any) -> Any:
    """``1 - rho``, the Spearman correlation of the soft ranks of ``prediction`` (:func:`softk.soft_rank`)
    with the ranks of ``target`` along the last axis, averaged over the batch."""
    ranks = softk.soft_rank(prediction, epsilon=epsilon, **options)
    target_ranks = jnp.argsort(jnp.argsort(target, axis=-1), axis=-1).astype(ranks.dtype) + 1.0
    ranks = ranks - ranks.mean(-1, keepdims=True)
    target_ranks = target_ranks - target_ranks.mean(-1, keepdims=True)
    rho = (ranks * target_ranks).sum(-1) / (jnp.linalg.norm(ranks, axis=-1) * jnp.linalg.norm(target_ranks, axis=-1))
    return jnp.mean(1.0 - rho)
