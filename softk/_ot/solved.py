"""The solved plan itself, measured on what is returned: for operators that need the n x m plan.

:func:`solved_plan` runs the kernel strategy with the plan formed in place
(:func:`softk._ot.kernel.solve_plan`: the solver's own kernel scaled by its last
scalings, one exponential in all) and measures ``error`` on that plan's row and
column sums, so ``error`` describes the returned array. Where the strategy's own
estimate missed what the plan shows (a kernel row underflowed), the solve
finishes in the log domain from the returned potentials
(:func:`finish_log_domain`, shared with the ops that never form the plan) and
the plan is formed from them. The transfer loss and soft sorting use it.
"""

from __future__ import annotations

import math
from typing import Any

from .._dispatch import values_known
from .._warnings import warn_if_not_converged
from .dense import sinkhorn_log
from .kernel import solve_plan
from .plan import balanced, marginal_error, plan_from_potentials, rounding_floor
from .schedule import INNER_TOL

__all__ = ["solved_plan", "needs_finish", "finish_log_domain"]


def needs_finish(xp: Any, error: Any, tol: float, n_iter: Any, max_iter: int, f: Any, g: Any, epsilon: float) -> bool:
    """Whether a measured ``error`` above ``tol`` and above the dtype's rounding floor of the
    potentials ``(f, g)`` (:func:`~softk._ot.plan.rounding_floor`: no iteration goes below it)
    leaves iterations to finish with (eager only)."""
    if not (values_known(xp, error) and float(error) > tol and int(n_iter) < max_iter):
        return False
    floor = rounding_floor(xp, f, g, epsilon)
    return floor is None or not math.isfinite(floor) or float(error) > floor


def finish_log_domain(xp: Any, cost: Any, log_a: Any, log_b: Any, epsilon: float, f: Any, g: Any, n_iter: Any, *, tol: float, max_iter: int, check_every: int) -> tuple[Any, Any, Any]:
    """Log-domain iterations from ``(f, g)`` (from zero where they are not finite) within the
    ``max_iter - n_iter`` iterations left: ``(f, g, n_iter)``, gauge-fixed. (Restarting finite
    potentials would not help: the solution's potentials have the same size, so the same
    rounding floor.)"""
    rounding = rounding_floor(xp, f, g, epsilon)
    if rounding is None or not math.isfinite(rounding):  # an underflowed kernel row left no usable start
        f, g = xp.zeros_like(f), xp.zeros_like(g)
    r = sinkhorn_log(xp, cost, log_a, log_b, epsilon, tol=INNER_TOL * tol, max_iter=max_iter - int(n_iter), check_every=check_every, init=(f, g))
    f, g = balanced(xp, r.f, r.g, xp.exp(log_a), xp.exp(log_b))
    return f, g, n_iter + r.n_iter


def solved_plan(
    xp: Any,
    cost: Any,
    log_a: Any,
    log_b: Any,
    epsilon: float,
    *,
    tol: float,
    max_iter: int,
    check_every: int = 10,
    scaling: bool = True,
    init: tuple[Any, Any] | None = None,
    what: str = "sinkhorn",
) -> tuple[Any, Any, Any, Any, Any]:
    """``(P, f, g, error, n_iter)`` for ``cost`` (..., n, m): the plan, the potentials in the
    gauge ``<f, a> = <g, b>``, ``error = max ||P 1 - a||_1 + ||P^T 1 - b||_1`` of that ``P``;
    warns (``what`` names the caller) when ``error > tol``.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> w = np.log(np.array([0.5, 0.5]))
    >>> P, f, g, error, n_iter = solved_plan(np, C, w, w, 1e-3, tol=1e-9, max_iter=100)
    >>> np.round(P, 6).tolist(), bool(error <= 1e-9)
    ([[0.5, 0.0], [0.0, 0.5]], True)
    """
    r, plan = solve_plan(xp, cost, log_a, log_b, epsilon, tol=INNER_TOL * tol, max_iter=max_iter, check_every=check_every, init=init, scaling=scaling)
    a, b = xp.exp(log_a), xp.exp(log_b)
    f, g = balanced(xp, r.f, r.g, a, b)
    n_iter = r.n_iter
    error = marginal_error(xp, xp.sum(plan, axis=-1), xp.sum(plan, axis=-2), a, b)
    if needs_finish(xp, error, tol, n_iter, max_iter, f, g, epsilon):
        del plan
        f, g, n_iter = finish_log_domain(xp, cost, log_a, log_b, epsilon, f, g, n_iter, tol=tol, max_iter=max_iter, check_every=check_every)
        plan = plan_from_potentials(xp, cost, log_a, log_b, f, g, epsilon)
        error = marginal_error(xp, xp.sum(plan, axis=-1), xp.sum(plan, axis=-2), a, b)
    warn_if_not_converged(xp, error <= tol, what, error=error, tol=tol, rounding=rounding_floor(xp, f, g, epsilon))
    return plan, f, g, error, n_iter
