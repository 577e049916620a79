"""Batched solves of the c-conjugate problem ``y^(x) = argmin_y c(x, y) - g(y)``, one problem per row.

ENOT replaces this inner solve by the map ``T(x)``; the amortised-conjugate
baselines (W2OT) solve it, warm-started at ``T(x)``. ``fun(y)`` returns the
objective per row (shape ``(n,)``) and its gradient in ``y`` (``(n, dim)``)
without gradient tracking; rows are independent problems. Two solvers:

* :func:`conjugate_gradient_steps`: a fixed number of gradient steps of one
  size (cheap and inexact);
* :func:`conjugate_lbfgs`: L-BFGS with a backtracking (Armijo) line search per
  row, until every row's gradient norm is at most ``gtol`` or ``max_iter``
  iterations; a data-dependent loop through :func:`softk._dispatch.while_loop`
  (``lax.while_loop`` under JAX, so it runs inside ``jit``). Converged rows
  stay put while the others iterate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat as compat

from ._dispatch import while_loop

__all__ = ["ConjugateSolution", "conjugate_gradient_steps", "conjugate_lbfgs"]

Objective = Callable[[Any], tuple[Any, Any]]


class ConjugateSolution(NamedTuple):
    """``y``: the solutions ``(n, dim)``; ``iterations``: L-BFGS iterations taken; ``evaluations``: calls of
    ``fun``; ``grad_norm``: the largest final gradient norm over the rows."""

    y: Any
    iterations: Any
    evaluations: Any
    grad_norm: Any


def conjugate_gradient_steps(fun: Objective, y: Any, *, steps: int, lr: float) -> Any:
    """``steps`` plain gradient steps ``y <- y - lr grad`` from ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> fun = lambda y: (0.5 * (y**2).sum(-1), y)  # minimum at 0
    >>> conjugate_gradient_steps(fun, np.array([[4.0, -2.0]]), steps=2, lr=0.5).tolist()
    [[1.0, -0.5]]
    """
    for _ in range(steps):
        y = y - lr * fun(y)[1]
    return y


def _rowdot(a: Any, b: Any) -> Any:
    xp = compat.array_namespace(a, b)
    return xp.sum(a * b, axis=-1)


def _direction(xp: Any, grad: Any, s: Any, d: Any, rho: Any) -> Any:
    """``-H grad`` by the two-loop recursion over the pairs ``(s[i], d[i])`` (newest first; ``rho = 0``: unused)."""
    q, alphas = grad, []
    for i in range(s.shape[0]):
        a = rho[i, ...] * _rowdot(s[i, ...], q)
        q = q - a[:, None] * d[i, ...]
        alphas.append(a)
    dd, sd = _rowdot(d[0, ...], d[0, ...]), _rowdot(s[0, ...], d[0, ...])
    gamma = xp.where(rho[0, ...] > 0, sd / xp.where(dd > 0, dd, xp.ones_like(dd)), xp.ones_like(dd))
    r = gamma[:, None] * q
    for i in reversed(range(s.shape[0])):
        r = r + (alphas[i] - rho[i, ...] * _rowdot(d[i, ...], r))[:, None] * s[i, ...]
    return -r


def conjugate_lbfgs(
    fun: Objective, y0: Any, *, max_iter: int, gtol: float, memory: int = 10, max_linesearch: int = 20,
    armijo: float = 1e-4,
) -> ConjugateSolution:
    """Minimise each row's ``fun`` by L-BFGS from ``y0`` to a gradient norm ``<= gtol`` within ``max_iter`` iterations.

    Each iteration takes the L-BFGS direction (the last ``memory`` curvature
    pairs of the row; steepest descent where that is not a descent direction)
    and halves a unit step up to ``max_linesearch`` times until
    ``f(y + t d) <= f(y) + armijo t <grad, d> + 4 eps |f(y)|`` (the last term
    forgives float round-off), or until the step no longer moves ``y`` in the
    working precision; a row with no acceptable step stays where it is and is
    done (stalled), like one whose gradient norm is below ``gtol``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([1.0, 10.0])
    >>> fun = lambda y: (0.5 * (a * (y - 1.0) ** 2).sum(-1), a * (y - 1.0))  # minimum at (1, 1)
    >>> out = conjugate_lbfgs(fun, np.zeros((3, 2)), max_iter=20, gtol=1e-8)
    >>> bool(np.abs(out.y - 1.0).max() < 1e-8), int(out.iterations), int(out.evaluations)
    (True, 9, 13)
    """
    xp = compat.array_namespace(y0)
    n, dim = y0.shape
    value, grad = fun(y0)
    hist = xp.zeros((memory, n, dim), dtype=y0.dtype)
    zero = xp.asarray(0, dtype=xp.int32)
    slack = 4.0 * xp.finfo(y0.dtype).eps

    def norm(g: Any) -> Any:
        return xp.sqrt(_rowdot(g, g))

    def cond(state: tuple) -> Any:
        return xp.logical_and(state[0] < max_iter, xp.any(xp.logical_and(norm(state[3]) > gtol, state[8])))

    def body(state: tuple) -> tuple:
        k, y, v, g, s, d, rho, evals, live = state
        active = xp.logical_and(norm(g) > gtol, live)
        step = _direction(xp, g, s, d, rho)
        slope = _rowdot(step, g)
        descent = slope < 0
        step = xp.where(descent[:, None], step, -g)
        slope = xp.where(descent, slope, -_rowdot(g, g))
        step = xp.where(active[:, None], step, xp.zeros_like(step))
        slope = xp.where(active, slope, xp.zeros_like(slope))
        resolution = slack * (norm(y) + 1.0)  # a step below this does not move y in this precision

        def sufficient(t: Any, v_new: Any) -> Any:
            return v_new <= v + armijo * t * slope + slack * xp.abs(v)

        def settled(t: Any, ok: Any) -> Any:
            return xp.logical_or(ok, t * norm(step) <= resolution)

        t = xp.ones_like(v)
        v1, g1 = fun(y + step)
        ok = xp.logical_or(sufficient(t, v1), xp.logical_not(active))  # done rows do not hold the search up
        ls = (zero + 1, t, y + step, v1, g1, ok)

        def ls_cond(ls: tuple) -> Any:
            return xp.logical_and(ls[0] < max_linesearch, xp.logical_not(xp.all(settled(ls[1], ls[5]))))

        def ls_body(ls: tuple) -> tuple:
            j, t, y1, v1, g1, ok = ls
            t = xp.where(ok, t, 0.5 * t)
            y2 = y + t[:, None] * step
            v2, g2 = fun(y2)
            keep = ok[:, None]
            return (j + 1, t, xp.where(keep, y1, y2), xp.where(ok, v1, v2), xp.where(keep, g1, g2),
                    xp.logical_or(ok, sufficient(t, v2)))

        j, _, y1, v1, g1, ok = while_loop(xp, ls_cond, ls_body, ls)
        live = xp.logical_and(live, ok)  # a row without an acceptable step has stalled: it stops there
        y1, g1, v1 = xp.where(ok[:, None], y1, y), xp.where(ok[:, None], g1, g), xp.where(ok, v1, v)
        s_new, d_new = y1 - y, g1 - g
        sd = _rowdot(s_new, d_new)
        good = sd > slack * norm(s_new) * norm(d_new)
        rho_new = xp.where(good, 1.0 / xp.where(good, sd, xp.ones_like(sd)), xp.zeros_like(sd))
        s = xp.concat([s_new[None, ...], s[:-1, ...]], axis=0)
        d = xp.concat([d_new[None, ...], d[:-1, ...]], axis=0)
        rho = xp.concat([rho_new[None, ...], rho[:-1, ...]], axis=0)
        return k + 1, y1, v1, g1, s, d, rho, evals + j, live

    live = xp.ones(value.shape, dtype=xp.bool)
    state = (zero, y0, value, grad, hist, hist, xp.zeros((memory, n), dtype=y0.dtype), zero + 1, live)
    k, y, _, g, *_, evals, _ = while_loop(xp, cond, body, state)
    return ConjugateSolution(y, k, evals, xp.max(norm(g)))
