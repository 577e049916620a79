"""Exact solver of the two-anchor entropic OT problem: one threshold per row.

With two targets the optimal plan depends on one scalar. For scores ``x``
(last axis, length n), a positive per-row ``scale`` and ``sign = +1`` the soft
selection of the k smallest (``sign = -1``: the k largest) is

    A_i = 1 / (1 + exp(sign * scale * (x_i - c) + tau)),   sum_i A_i = k,

a sigmoid of the affine score ``s_i - t`` of docs/maths.md section 2. ``sum A``
is monotone in ``tau``, so a safeguarded Newton iteration (bracketed, with a
bisection fallback) reaches machine precision in a handful of O(n) passes at
any temperature.

Speed: ``c`` starts between the k-th and (k+1)-th selected scores (an O(n)
partial sort). On rows of at least ``REDUCED_MIN`` entries ``tau`` starts at the
root of the problem on the best ``k + 17`` entries plus every ``STRIDE``-th
other entry weighted for its share of the rest (one full-size evaluation at
epsilon = 1e-3, two at 0.1 and 1); on shorter rows, where each operation's
fixed cost rules, at 0 with ``UNROLLED`` Newton steps before the first
convergence test (one host round trip instead of one per step).
``w_i = exp(scale * (x_i - c))`` is computed once, and each Newton step on
``tau`` costs one multiply and one reciprocal per entry, with no further
``exp``. ``w`` is clipped to ``exp(+-U)`` and ``tau`` kept in ``|tau| < T``
with ``U + T < L / 2`` (``L = -log`` of the smallest normal float): every
product, and every square ``A_i^2`` of the curvature, stays a normal float
(a subnormal operand costs a CPU 30x per operation) and ``exp`` stays on its
fast path (out-of-range arguments cost it 10x); ``U - T > L / 4``, so the
clipping changes ``A`` by far less than rounding (``e^{-0.28 L}``, 2e-11 in
float32); if the root leaves that window, ``c`` is moved to the root and ``w``
recomputed. Without weights and from the midpoint that cannot happen where
``log(max(k, n - k)) < 0.9 T`` (float32: n up to about 5,700; float64: any n):
the k-th and (k+1)-th entries have odds ``w <= 1`` and ``1 / w``, and bounding
the others by them gives ``sum A >= k`` at ``tau = -log k`` and ``sum A <= k``
at ``tau = log(n - k)``, so a root lies between; there the recentring loop is
left out (one loop operator less per call under ``torch.compile``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device as _dev

from ._dispatch import while_loop
from ._xp import into, normal_exponent, top_values

__all__ = ["soft_select", "hard_select", "first_k", "hard_epsilon", "ThresholdResult"]

MAX_NEWTON = 100
UNROLLED = 3  # Newton steps taken before the first convergence test, on rows shorter than REDUCED_MIN
REDUCED_MIN = 2048  # rows at least this long start from the root of a reduced problem instead
MAX_RECENTRE = 8
CANDIDATES = 16  # ranked entries past the (k+1)-th that the starting point is solved on
STRIDE = 64  # every STRIDE-th entry of the rest stands for its neighbours in the starting problem


def hard_epsilon(xp: Any, dtype: Any) -> float:
    """Below this epsilon (relative to the paper's normalisation) soft top-k returns its limit,
    the hard mask: ``ulp / 16`` (7e-9 in float32, 1.4e-17 in float64), where the inverse
    temperature leaves the range in which the threshold can be resolved."""
    return float(xp.finfo(dtype).eps) / 16.0


def hard_select(xp: Any, x: Any, k: int, *, largest: bool) -> Any:
    """The ``epsilon -> 0`` limit of soft top-k: 1 on the ``k`` best entries, 0 elsewhere, and
    entries tied with the ``k``-th best sharing what is left equally (sum ``k`` exactly).

    >>> import numpy as np
    >>> hard_select(np, np.array([3.0, 1.0, 3.0, 0.0]), 1, largest=True).tolist()
    [0.5, 0.0, 0.5, 0.0]
    """
    best, _ = top_values(xp, x, k, largest=largest)
    kth = best[..., k - 1 : k]
    better = x > kth if largest else x < kth
    tied = x == kth
    n_better = xp.sum(xp.astype(better, x.dtype), axis=-1, keepdims=True)
    n_tied = xp.sum(xp.astype(tied, x.dtype), axis=-1, keepdims=True)
    share = (k - n_better) / n_tied
    return xp.where(better, xp.ones_like(x), xp.where(tied, share, xp.zeros_like(x)))


def first_k(xp: Any, x: Any, k: int, *, largest: bool) -> Any:
    """The hard top-k mask with ties to the lowest index (``torch.topk``'s and ``lax.top_k``'s
    rule): exactly ``k`` ones per row, in O(n) after the partial sort.

    >>> import numpy as np
    >>> first_k(np, np.array([3.0, 1.0, 3.0, 0.0]), 1, largest=True).tolist()
    [1.0, 0.0, 0.0, 0.0]
    """
    best, _ = top_values(xp, x, k, largest=largest)
    kth = best[..., k - 1 : k]
    better = x > kth if largest else x < kth
    tied = xp.astype(x == kth, x.dtype)
    room = k - xp.sum(xp.astype(better, x.dtype), axis=-1, keepdims=True)
    first_tied = (tied > 0) & (xp.cumulative_sum(tied, axis=-1) <= room)
    return xp.astype(better | first_tied, x.dtype)


@dataclass(frozen=True)
class ThresholdResult:
    """The indicator ``A``, its sensitivity ``A (1 - A)`` (the sigmoid's derivative, all
    the VJP needs), ``converged`` (0-d bool array), ``n_iter`` (int array) and
    ``top_index``: per row, the index of the most selected entry where the partial
    sort gave it for free (see :func:`softk._xp.top_values`), else ``None``."""

    indicator: Any
    sensitivity: Any
    converged: Any
    n_iter: Any
    top_index: Any = None


def soft_select(
    xp: Any, x: Any, k: Any, scale: Any, *, largest: bool, weights: Any = None, centre: Any = None
) -> ThresholdResult:
    """Soft indicator of the ``k`` smallest (or largest) entries of ``x`` along the last axis.

    Parameters
    ----------
    x : array, shape ``(..., n)``, real floating
    k : int, ``1 <= k < n``; with ``weights``, the selected mass, a float in (0, 1).
    scale : array, shape ``(..., 1)``, positive: inverse temperature per row.
    largest : bool, select the largest entries instead of the smallest.
    weights : optional array like ``x``, positive, each row summing to 1: solve
        ``sum weights A = k`` instead (soft top-p); ``centre`` (shape ``(..., 1)``),
        a score near the threshold, is then required.

    Examples
    --------
    >>> import numpy as np
    >>> r = soft_select(np, np.array([[3.0, 1.0, 2.0, 0.0]]), 2, np.array([[50.0]]), largest=False)
    >>> np.round(r.indicator, 6).tolist(), float(r.indicator.sum())
    ([[0.0, 1.0, 0.0, 1.0]], 2.0)
    """
    n = x.shape[-1]
    mass_total = n if weights is None else 1.0  # the total mass that k is a part of
    finfo = xp.finfo(x.dtype)
    log_normal = normal_exponent(xp, x.dtype)
    clip, window = 0.38 * log_normal, 0.11 * log_normal  # U + T < L / 2, U - 0.9 T > L / 4 (module docstring)
    atol = 4.0 * finfo.eps * k * math.log2(n + 1)
    step_tol = 8.0 * finfo.eps
    count = min(n, k + 1 + CANDIDATES)  # the best entries of the reduced starting problem
    reduced = weights is None and n >= max(4 * count, REDUCED_MIN)
    if weights is None:  # the partial sort: the k + 1 best (the centre), the count best if reduced
        best, top_index = top_values(xp, x, count if reduced else k + 1, largest=largest)
        centre = 0.5 * (best[..., k - 1 : k] + best[..., k : k + 1])
    else:
        top_index = None
    slope = -scale if largest else scale
    zero = xp.zeros_like(centre)
    dev = _dev(x)
    tiny = float(finfo.smallest_normal)

    def newton(w: Any, a: Any, tau: Any, weights: Any = None, mass_total: float = n, unrolled: int = 0) -> tuple[Any, Any, Any, Any]:
        """Solve sum(weights / (1 + w e^tau)) = k for tau in [-window, window], from ``tau``.

        Newton runs on the log-odds ``log S - log(N - S)`` of the total
        ``S = sum weights A`` (weights 1 when ``None``; ``N = mass_total``
        is the weights' sum), which is nearly linear in ``tau`` in both tails,
        so a start far from the root costs one or two steps, not ``|tau|`` of them.
        The first ``unrolled`` steps run without a convergence test (no host
        round trip each: on small inputs those dominate), clamped to the window;
        the loop then checks the result and, where needed, goes on safeguarded
        (bracketed, with bisection).
        """
        log_odds = math.log(k / (mass_total - k))

        def evaluate(tau: Any, a: Any) -> tuple[Any, Any, Any]:
            """``A`` at ``tau`` (in ``a``'s memory), ``S`` and ``sum weights A (1 - A)``."""
            a = into(xp, a, xp.multiply, w, xp.exp(tau))
            a += 1.0
            a **= -1.0
            if weights is None:
                total = xp.sum(a, axis=-1, keepdims=True)
                return a, total, total - xp.linalg.vector_norm(a, axis=-1, keepdims=True) ** 2
            weighted = weights * a
            total = xp.sum(weighted, axis=-1, keepdims=True)
            return a, total, total - xp.sum(weighted * a, axis=-1, keepdims=True)

        def step(tau: Any, total: Any, curvature: Any) -> Any:
            """The Newton step on the log-odds: ``d/dtau log(S / (N - S)) = -curvature N / (S (N - S))``."""
            selected, rest = xp.clip(total, tiny, None), xp.clip(mass_total - total, tiny, None)
            gap = xp.log(selected / rest) - log_odds
            return tau + gap * (selected * rest) / xp.clip(curvature * mass_total, tiny, None)

        def converged(total: Any, tau: Any, new_tau: Any) -> Any:
            return (xp.abs(total - k) <= atol) | (xp.abs(new_tau - tau) <= step_tol * (1.0 + xp.abs(tau)))

        def cond(state: tuple) -> Any:
            it, done = state[0], state[-1]
            return xp.logical_and(it < MAX_NEWTON, xp.logical_not(xp.all(done)))

        def body(state: tuple) -> tuple:
            it, tau, lo, hi, a, total, curvature, done = state
            above = total > k
            lo = xp.where(above, tau, lo)
            hi = xp.where(above, hi, tau)
            newton_tau = step(tau, total, curvature)
            new_tau = xp.where((newton_tau > lo) & (newton_tau < hi), newton_tau, 0.5 * (lo + hi))
            new_tau = xp.where(done, tau, new_tau)  # a converged row stays where it is
            a, total, curvature = evaluate(new_tau, a)
            return it + 1, new_tau, lo, hi, a, total, curvature, done | converged(total, tau, new_tau)

        for _ in range(unrolled):
            a, total, curvature = evaluate(tau, a)
            tau = xp.clip(step(tau, total, curvature), -window, window)
        a, total, curvature = evaluate(tau, a)
        done = xp.abs(total - k) <= atol
        init = (xp.asarray(unrolled, device=dev), tau, zero - window, zero + window, a, total, curvature, done)
        it, tau, _, _, a, _, _, done = while_loop(xp, cond, body, init, traceable=True)
        return tau, a, done, it

    def odds(values: Any, centre: Any) -> tuple[Any, Any]:
        """``w = exp(slope (values - centre))``, the exponent clipped to ``+-clip``, and a scratch
        buffer of the same shape (the exponent)."""
        u = values - centre
        u *= slope
        u = into(xp, u, xp.clip, u, -clip, clip)  # scalar bounds: PyTorch's row bounds cost 3x
        return xp.exp(u), u

    # Start: the root of the problem on the ``count`` best entries, each weight 1, and
    # every STRIDE-th other entry, each standing for its share of the n - count others.
    # At small epsilon the best entries carry the sum (the full problem is solved at
    # its first evaluation); at large epsilon the strided sample carries the tail.
    # The full problem is then centred on that root (tau = 0 there: at large epsilon the root
    # sits about log(n / k) from the midpoint, past the window at large n / k).
    # Small rows start from the midpoint instead, with unrolled steps (per-call overhead rules there).
    # Unweighted, from the midpoint, a root lies in [-log k, log(n - k)] (module docstring):
    # where that is inside the window no recentring is needed, so there is no outer loop.
    contained = not reduced and weights is None and math.log(max(k, n - k)) < 0.9 * window
    reduced_iter, unrolled = xp.asarray(0, device=dev), UNROLLED
    if reduced:
        unrolled = 0
        sample = x[..., ::STRIDE]
        beyond = best[..., count - 1 : count]
        others = (sample < beyond) if largest else (sample > beyond)
        others = xp.astype(others, x.dtype)
        share = (n - count) / xp.maximum(xp.sum(others, axis=-1, keepdims=True), xp.ones_like(centre))
        sample_weights = xp.concat([xp.ones_like(best), others * share], axis=-1)
        w_start, a_start = odds(xp.concat([best, sample], axis=-1), centre)
        tau_start, _, _, reduced_iter = newton(w_start, a_start, zero, sample_weights)
        centre = centre - tau_start / slope

    def solve_at(centre: Any, tau: Any, it: Any, n_iter: Any) -> tuple:
        """Newton around ``centre``; ask for another pass where the root left the window."""
        w, u = odds(x, centre)
        tau, a, done, inner = newton(w, u, tau, weights, mass_total, unrolled)  # u is free: it becomes A
        again = xp.abs(tau) >= 0.9 * window
        centre = xp.where(again, centre - tau / slope, centre)
        return it + 1, centre, a, w, tau, done, n_iter + inner, again

    def outer_cond(state: tuple) -> Any:
        it, again = state[0], state[-1]
        return xp.logical_and(it < MAX_RECENTRE, xp.any(again))

    first = solve_at(centre, zero, xp.asarray(0, device=dev), reduced_iter)
    if contained:
        _, _, a, w, tau, done, n_iter, again = first
    else:
        _, _, a, w, tau, done, n_iter, again = while_loop(
            xp, outer_cond, lambda s: solve_at(s[1], zero, s[0], s[6]), first, traceable=True
        )
    # w is free: it becomes A (1 - A) = q A^2 with the odds q = w e^tau, in that order
    # (q A ~ 1), so no cancellation near A = 1 and no underflow of A^2.
    d = w
    d *= xp.exp(tau)
    d *= a
    d *= a
    converged = xp.all(done & xp.logical_not(again))
    return ThresholdResult(a, d, converged, n_iter, top_index)
