"""Beam search with the sorted SOFT top-k in place of the hard selection (Xie et al. 2020, section 4).

At every step the ``k * V`` candidates (beam ``j`` extended by token ``w``,
score ``s_j + log p(w | beam j)``) go through :func:`softk.soft_topk_sorted`:
``A[(j, w), r]`` is the soft indicator that candidate ``(j, w)`` has rank
``r + 1``. Each new beam ``r`` is the ``A[:, r]``-weighted mixture of the
candidates: its score, its token (a soft one-hot), its model state and its
history. The final sequence scores are therefore differentiable functions of
the model's log-probabilities, and as ``epsilon -> 0`` (or with ``hard=True``)
the search is ordinary beam search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from ._validate import check_int, check_positive_float, namespace_of
from .sorting_topk import soft_topk_sorted

__all__ = ["beam_search", "BeamSearchOutput"]


class BeamSearchOutput(NamedTuple):
    """What :func:`beam_search` returns; every array has the caller's array type.

    ``k`` beams in rank order (beam 0 is the best), ``T = length`` steps, ``V``
    tokens, ``batch`` the batch shape of the log-probabilities.
    """

    scores: Any
    """``(*batch, k)``: sequence scores, the sum of the chosen tokens' log-probabilities."""
    tokens: Any
    """``(*batch, k, T, V)``: soft one-hot tokens of each beam (exactly one-hot when hard)."""
    log_probs: Any
    """``(*batch, k, T, V)``: the log-probabilities the model gave at step ``t`` on each beam's prefix."""
    state: Any
    """The beams' final model state (the step function's state layout, ``(*batch, k, ...)``)."""


def _as_tuple(state: Any) -> tuple[tuple[Any, ...], bool]:
    if isinstance(state, (tuple, list)):
        if not state:
            raise ValueError("state must be an array or a non-empty tuple of arrays")
        return tuple(state), True
    return (state,), False


def _mix(xp: Any, weights: Any, arrays: tuple[Any, ...], nbatch: int) -> tuple[Any, ...]:
    """``out[..., r, *f] = sum_j weights[..., r, j] * a[..., j, *f]`` for each array ``a``."""
    out = []
    for a in arrays:
        lead = a.shape[: nbatch + 1]
        flat = xp.reshape(a, (*lead, -1))
        mixed = xp.astype(weights, a.dtype, copy=False) @ flat
        out.append(xp.reshape(mixed, (*weights.shape[:-1], *a.shape[nbatch + 1 :])))
    return tuple(out)


def _finite(xp: Any, a: Any) -> Any:
    """``a`` with its ``-inf`` entries (forbidden tokens) replaced by 0."""
    return xp.where(a > -math.inf, a, xp.zeros_like(a))


def _mix_log_probs(xp: Any, weights: Any, log_probs: Any, nbatch: int) -> Any:
    """:func:`_mix` of log-probabilities that may hold ``-inf``: the mixture is ``-inf`` where a
    parent with positive weight has ``-inf`` (no ``0 * inf``)."""
    (mixed,) = _mix(xp, weights, (_finite(xp, log_probs),), nbatch)
    (forbidden,) = _mix(xp, weights, (xp.astype(log_probs == -math.inf, log_probs.dtype),), nbatch)
    return xp.where(forbidden > 0, xp.full_like(mixed, -math.inf), mixed)


def _hard_assignment(xp: Any, cand: Any, k: int) -> Any:
    """One-hot ``(..., n, k)``: column ``r`` marks the candidate of rank ``r + 1`` (ties: lowest index)."""
    order = xp.argsort(cand, axis=-1, descending=True, stable=True)[..., :k]
    n = cand.shape[-1]
    positions = xp.arange(n, device=_device(cand))
    return xp.astype(order[..., None, :] == positions[:, None], cand.dtype)


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


def beam_search(
    step: Callable[[Any, Any], tuple[Any, Any]],
    state: Any,
    k: int,
    length: int,
    *,
    epsilon: float = 0.01,
    hard: bool = False,
    method: str = "newton",
) -> BeamSearchOutput:
    r"""Beam search whose top-k selection is the sorted SOFT top-k, so its scores are differentiable.

    At step ``t`` every beam ``j`` (score :math:`s_j`) is extended by every
    token ``w``; candidate :math:`c = (j, w)` scores
    :math:`x_c = s_j + \log p_t(w \mid \text{beam } j)`. With
    :math:`A = \mathrm{soft\_topk\_sorted}(x - \max x, k)` (``A[c, r]`` the soft
    indicator that :math:`c` has rank :math:`r + 1`), the new beams are
    :math:`s'_r = \sum_c A_{cr} x_c`, :math:`\mathrm{token}'_r = \sum_c A_{cr}\, e_w`,
    :math:`h'_r = \sum_c A_{cr}\, h_j`, so everything is a smooth function of the
    log-probabilities; for ``epsilon -> 0`` :math:`A` is the one-hot rank matrix
    and this is ordinary beam search.

    Parameters
    ----------
    step : callable ``(tokens, state) -> (log_probs, state)``
        One decoder step on all beams at once, returning the next-token
        log-probabilities and the updated state (an array or a tuple of
        arrays, as given). On the first call ``tokens`` is ``None`` (the start
        of the sequence), ``state`` is the initial state, ``(*batch, ...)``,
        and ``log_probs`` must be ``(*batch, V)``. Afterwards ``tokens`` is
        ``(*batch, k, V)``, the beams' last tokens as soft one-hot rows (they
        sum to 1, exactly one-hot when hard: embed them as ``tokens @ E``), the
        state arrays are ``(*batch, k, ...)`` and ``log_probs`` must be
        ``(*batch, k, V)``. Write it with the caller's framework or the array
        API; gradients flow through that framework's autograd. Forbid a token
        by giving it log-probability ``-inf``: it is never chosen, hard or
        soft (the search needs at least ``k`` allowed candidates per step;
        hard beams past them score ``-inf``). A large finite penalty such as
        ``-1e9`` is a real score and widens the soft selection: use ``-inf``.
    state : array or tuple of arrays
        The initial model state, each ``(*batch, ...)``: one per sequence, no
        beam axis.
    k : int
        Beam size, ``1 <= k <= V - 1``.
    length : int
        Number of tokens to generate, ``>= 1``.
    epsilon : float
        Regularisation of :func:`softk.soft_topk_sorted` (static). The
        candidate scores are shifted to a maximum of 0, so the width of the
        soft selection in nats is about ``epsilon * R**2 / 2`` with ``R`` the
        range of the candidate scores (clip very unlikely log-probabilities in
        ``step`` to keep ``R`` small).
    hard : bool
        Use the hard top-k (ordinary beam search, ties to the lower candidate
        index ``j * V + w``); the scores are still differentiable in the
        log-probabilities, the selection is not.
    method : str
        Solver of :func:`softk.soft_topk_sorted`.

    Returns
    -------
    BeamSearchOutput
        ``scores (*batch, k)``, ``tokens`` and ``log_probs`` ``(*batch, k, length, V)``,
        ``state``: the beams in rank order, beam 0 the best.

    Examples
    --------
    A fixed bigram model over 4 tokens (the state is the log-probabilities of
    the next token; the first step draws from ``start``). The best two of the
    64 sequences of length 3 are ``0 1 0`` and ``0 1 2``:

    >>> import numpy as np, softk
    >>> logits = np.array([[0.0, 2.0, 1.0, -1.0], [1.5, 0.0, 1.0, 0.2],
    ...                    [0.3, 0.1, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]])
    >>> logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    >>> start = np.log(np.array([[0.5, 0.2, 0.2, 0.1]]))     # batch of 1
    >>> def step(tokens, state):
    ...     lp = state if tokens is None else tokens @ logp
    ...     return lp, lp
    >>> hard = softk.beam_search(step, start, 2, 3, hard=True)
    >>> hard.tokens.argmax(-1).tolist(), hard.scores.round(3).tolist()
    ([[[0, 1, 0], [0, 1, 2]]], [[-1.876, -2.376]])
    >>> soft = softk.beam_search(step, start, 2, 3, epsilon=1e-3)
    >>> bool(np.abs(soft.scores - hard.scores).max() < 1e-6)
    True
    >>> softk.beam_search(step, start, 2, 3, epsilon=0.1).scores.round(3).tolist()
    [[-2.646, -3.03]]
    """
    if not callable(step):
        raise TypeError(f"step must be a callable (tokens, state) -> (log_probs, state), got {step!r}")
    states, is_tuple = _as_tuple(state)
    xp = namespace_of(**{f"state[{i}]" if is_tuple else "state": s for i, s in enumerate(states)})
    k = check_int("k", k, 1, 2**62)  # the upper bound, V - 1, is known after the first step
    length = check_int("length", length, 1, 10**9)
    epsilon = check_positive_float("epsilon", epsilon)
    if not isinstance(hard, bool):
        raise TypeError(f"hard must be a bool, got {hard!r}")

    def call(tokens: Any, beams: tuple[Any, ...], nbeams: int | None) -> tuple[Any, tuple[Any, ...]]:
        log_probs, new = step(tokens, beams if is_tuple else beams[0])
        new, _ = _as_tuple(new)
        shape = tuple(getattr(log_probs, "shape", ()))
        lead = shape[:-1] if nbeams is None else shape[:-2]
        want = "(*batch, V)" if nbeams is None else f"(*batch, {nbeams}, V) with batch {batch} and V = {vocab}"
        if (nbeams is None and len(shape) < 1) or (
            nbeams is not None and (len(shape) < 2 or lead != batch or shape[-2:] != (nbeams, vocab))
        ):
            raise ValueError(f"step must return log_probs of shape {want}, got {shape}")
        nlead = len(shape) - 1
        if len(new) != len(beams) or any(tuple(n.shape[:nlead]) != shape[:-1] for n in new):
            raise ValueError(
                f"step must return a state laid out like its input, each array starting with the "
                f"dimensions {shape[:-1]} of log_probs, got shapes {[tuple(n.shape) for n in new]}"
            )
        return log_probs, new

    # First step: one beam per sequence, from the initial state (no beam axis yet).
    batch = vocab = None
    log_probs, beams = call(None, states, None)
    batch, vocab = tuple(log_probs.shape[:-1]), log_probs.shape[-1]
    nb = len(batch)
    if not k <= vocab - 1:
        raise ValueError(
            f"k must satisfy 1 <= k <= V - 1 = {vocab - 1} (fewer beams than the {vocab} tokens of the first step), got {k}"
        )
    log_probs = xp.expand_dims(log_probs, axis=nb)
    beams = tuple(xp.expand_dims(b, axis=nb) for b in beams)
    scores = xp.zeros((*batch, 1), dtype=log_probs.dtype, device=_device(log_probs))
    hist_tok = hist_lp = None
    tokens = None
    for t in range(length):
        if t > 0:
            log_probs, beams = call(tokens, beams, k)
        nsrc = log_probs.shape[-2]
        cand = xp.reshape(scores[..., None] + log_probs, (*batch, nsrc * vocab))
        allowed = cand > -math.inf  # forbidden tokens (log-probability -inf) are never chosen
        if hard:
            assign = _hard_assignment(xp, cand, k)
        else:
            # forbidden candidates wait just below the allowed ones, then lose their weight exactly
            finite = xp.where(allowed, cand, xp.max(cand, axis=-1, keepdims=True))
            floor = xp.min(finite, axis=-1, keepdims=True) - 1.0
            shifted = xp.where(allowed, cand, floor) - xp.max(cand, axis=-1, keepdims=True)
            assign = soft_topk_sorted(shifted, k, epsilon=epsilon, method=method)
            assign = xp.where(allowed[..., None], assign, xp.zeros_like(assign))
        # assign: (*batch, nsrc * V, k) -> weights over (source beam, token) for each new beam
        a4 = xp.reshape(assign, (*batch, nsrc, vocab, k))
        scores = xp.sum(assign * _finite(xp, cand)[..., None], axis=-2)  # (*batch, k)
        if hard:  # fewer than k allowed candidates: the beams past them score -inf
            forced = xp.sum(xp.astype(~allowed, assign.dtype)[..., None] * assign, axis=-2) > 0
            scores = xp.where(forced, xp.full_like(scores, -math.inf), scores)
        tokens = xp.permute_dims(xp.sum(a4, axis=-3), (*range(nb), nb + 1, nb))  # (*batch, k, V)
        parents = xp.permute_dims(xp.sum(a4, axis=-2), (*range(nb), nb + 1, nb))  # (*batch, k, nsrc)
        beams = _mix(xp, parents, beams, nb)
        step_lp = _mix_log_probs(xp, parents, log_probs, nb)
        if hist_tok is None:
            hist_tok, hist_lp = tokens[..., None, :], step_lp[..., None, :]
        else:
            (hist_tok,) = _mix(xp, parents, (hist_tok,), nb)
            hist_lp = _mix_log_probs(xp, parents, hist_lp, nb)
            hist_tok = xp.concat([hist_tok, tokens[..., None, :]], axis=-2)
            hist_lp = xp.concat([hist_lp, step_lp[..., None, :]], axis=-2)
    final = beams if is_tuple else beams[0]
    return BeamSearchOutput(scores, hist_tok, hist_lp, final)
