"""L-BFGS ascent for the sparsity-constrained (semi-)dual, batched, after Newton stalls.

Near a kink of the concave objective (where the cardinality constraint binds)
semismooth Newton (:mod:`softk.sparse_newton`) stops making progress; quasi-Newton
steps (``MEMORY`` pairs, two-loop recursion, Armijo backtracking) go on while
they raise the objective by at least ``PROGRESS`` (relative) per step, on a
moving average over the last few steps. Loops go
through :func:`softk._dispatch.while_loop`, so it runs under ``jax.jit``.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from ._dispatch import while_loop

__all__ = ["lbfgs", "backtrack", "pick", "MAX_HALVINGS", "STALLS", "PROGRESS"]

MAX_HALVINGS = 20
STALLS = 3  # steps in a row without progress after which Newton hands over to L-BFGS, and L-BFGS stops


def lbfgs(xp: Any, at: Any, error: Any, it: Any, x: Any, current: tuple, tol: float, max_iter: int, slack: float) -> tuple:
    """L-BFGS ascent (``MEMORY`` pairs, Armijo backtracking) from a point where Newton stalled,
    until the marginals are met, ``STALLS`` steps in a row bring no progress (the ascent per
    step, smoothed over the last few, below ``PROGRESS`` relative), or ``max_iter``."""
    batch, size = x.shape[:-1], x.shape[-1]
    dtype, dev = x.dtype, device(x)
    hist = xp.zeros((MEMORY, *batch, size), dtype=dtype, device=dev)
    zeros = xp.zeros(batch, dtype=xp.int32, device=dev)

    def dot(u: Any, v: Any) -> Any:
        return xp.sum(u * v, axis=-1)

    def direction(grad: Any, s_hist: Any, y_hist: Any, count: Any) -> Any:
        """Two-loop recursion; the history is kept newest first (``hist[i]``, valid for ``i < count``)."""
        q, alphas = grad, []
        for i in range(MEMORY):
            s_i, y_i = s_hist[i, ...], y_hist[i, ...]
            sy = dot(s_i, y_i)
            valid = xp.logical_and(i < count, sy > 0)
            rho = xp.where(valid, 1.0 / xp.where(valid, sy, xp.ones_like(sy)), xp.zeros_like(sy))
            al = rho * dot(s_i, q)
            q = q - al[..., None] * y_i
            alphas.append((s_i, y_i, rho, al))
        s0, y0, rho0, _ = alphas[0]
        gamma0 = xp.where(rho0 > 0, dot(s0, y0) / xp.where(rho0 > 0, dot(y0, y0), xp.ones_like(rho0)), xp.zeros_like(rho0))
        scale = xp.where(gamma0 > 0, gamma0, 1.0 / xp.maximum(xp.sqrt(dot(grad, grad)), xp.full_like(rho0, slack)))
        r = scale[..., None] * q
        for s_i, y_i, rho, al in reversed(alphas):
            r = r + (al - rho * dot(y_i, r))[..., None] * s_i
        return r

    def cond(state: tuple) -> Any:
        it, _, current, stalls = state[:4]
        return xp.logical_and(it < max_iter, xp.logical_not(xp.all(xp.logical_or(error(current[1]) <= tol, stalls >= STALLS))))

    def body(state: tuple) -> tuple:
        it, x, current, stalls, s_hist, y_hist, count, rate = state
        f0, grad = current[0], current[1]
        finished = xp.logical_or(error(grad) <= tol, stalls >= STALLS)
        # ascent on F: minimise -F, whose gradient is -grad; y pairs use -grad differences
        d = direction(grad, s_hist, y_hist, count)
        d = xp.where(finished[..., None], xp.zeros_like(d), d)
        slope = dot(grad, d)
        d = xp.where((slope > 0)[..., None], d, grad / xp.maximum(xp.sqrt(dot(grad, grad)), xp.full_like(f0, slack))[..., None])
        slope = dot(grad, d)
        floor = f0 - slack * (xp.abs(f0) + 1.0)

        t, found = backtrack(xp, at, x, d, current, finished, slope, floor)
        step = t[..., None] * d
        rate = DECAY * rate + (1.0 - DECAY) * (found[0] - f0)  # recent ascent per step, smoothed
        flat = rate <= PROGRESS * (xp.abs(f0) + slack)
        stalls = xp.where(finished, stalls, xp.where(flat, stalls + 1, xp.zeros_like(stalls)))
        moved = (t > 0)[..., None]
        s_hist = _push(xp, s_hist, step, moved)
        y_hist = _push(xp, y_hist, grad - found[1], moved)
        count = xp.where(moved[..., 0], count + 1, count)
        return it + 1, x + step, found, stalls, s_hist, y_hist, count, rate

    rate = xp.zeros_like(current[0])
    state = while_loop(xp, cond, body, (it, x, current, zeros, hist, hist, zeros, rate))
    return state[:4]


MEMORY = 10
PROGRESS = 1e-5  # L-BFGS: ascent per step (smoothed) below this, relative, is no progress
DECAY = 0.7  # smoothing of the ascent per step (an exponential moving average)


def backtrack(xp: Any, at: Any, x: Any, d: Any, current: tuple, finished: Any, slope: Any, floor: Any) -> tuple[Any, tuple]:
    """Armijo backtracking along ``d`` from ``x`` (``current = at(x)``): the first of ``t = 1, 1/2,
    ...`` (at most ``MAX_HALVINGS`` halvings) with ``at(x + t d)[0] >= floor + 1e-4 t slope``, per
    batch entry; ``(t, at(x + t d))``, with ``t = 0`` and ``current`` where none is found or the entry
    is ``finished``."""

    def cond(ls: tuple) -> Any:
        j, _, ok, _ = ls
        return xp.logical_and(j <= MAX_HALVINGS, xp.logical_not(xp.all(ok)))

    def body(ls: tuple) -> tuple:
        j, t, ok, found = ls
        t = xp.where(ok, t, 0.5 * t)
        new = at(x + t[..., None] * d)
        fresh = xp.logical_and(xp.logical_not(ok), new[0] >= floor + 1e-4 * t * slope)
        return j + 1, t, xp.logical_or(ok, fresh), pick(xp, fresh, new, found)

    # one evaluation site (t = 1 is the first pass): the objective is traced once per line search
    start = (xp.asarray(0, device=device(x)), xp.full_like(current[0], 2.0), finished, current)
    _, t, ok, found = while_loop(xp, cond, body, start)
    return xp.where(xp.logical_and(ok, xp.logical_not(finished)), t, xp.zeros_like(t)), found


def pick(xp: Any, flag: Any, new: tuple, old: tuple) -> tuple:
    """``new`` where ``flag`` (per batch entry), else ``old``, item by item."""
    return tuple(xp.where(xp.reshape(flag, flag.shape + (1,) * (u.ndim - flag.ndim)), u, v) for u, v in zip(new, old))


def _push(xp: Any, hist: Any, value: Any, moved: Any) -> Any:
    """``hist`` (MEMORY, ..., size), newest first, with ``value`` pushed in where ``moved``."""
    shifted = xp.concat([value[None, ...], hist[:-1, ...]], axis=0)
    return xp.where(moved[None, ...], shifted, hist)
