"""The kernel strategy: epsilon scaling and absorption-stabilised kernel iterations (eager).

Same problem, same stopping rule and same result as :func:`softk._ot.dense.sinkhorn_log`
(docs/maths.md section 1), at matrix-vector-product speed:

* **Absorption.** The potentials ``(f, g)`` are folded into a kernel
  ``K_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` (its columns normalised to
  ``b`` in the log domain while it is built, so no entry overflows). Kernel-mode
  updates ``u = a / (K v)``, ``v = b / (K^T u)`` then run as two matrix-vector
  products per iteration; the plan is ``diag(u) K diag(v)``, i.e. the potentials
  are ``f + eps log u``, ``g + eps log v``. When ``|log u|`` or ``|log v|``
  exceeds a quarter of the dtype's exponent range (177 in float64, 22 in
  float32) the scalings are absorbed into ``(f, g)`` and the kernel rescaled
  by them. Should an update still produce a non-finite scaling (a row whose
  kernel underflowed), that block is redone with log-domain updates and the
  kernel rebuilt from the potentials.
* **Epsilon scaling.** Stages ``eps 2^k``, ``k = K, ..., 1, 0``, starting at
  most at the cost's spread, each warm-started from the previous stage's
  potentials and run to the loose ``STAGE_TOL`` (:mod:`softk._ot.schedule`); the last stage runs to
  ``tol``. Halving epsilon at fixed potentials squares the kernel
  (``K <- K^2 / (a b^T)``): no exponential. The last stage rebuilds the
  kernel exactly from the potentials (one exponential), so rounding does not
  accumulate over the stages.
* **Over-relaxation** (Thibault et al. 2017): after a first plain block the
  updates are ``u <- u^(1 - w) (a / K v)^w`` with ``w = OMEGA`` (1.9), halved
  towards 1 whenever the error grows; the last update of every block is
  plain, so the columns are exact when the error is measured.
* The row-marginal error is measured every ``check_every`` iterations from the
  product the next update needs anyway.

Absorption needs concrete values (it decides when to absorb and rebuild).
Traced under ``jax.jit`` (always, for JAX) the solve is one compiled loop of
log-domain blocks with the same epsilon-scaling stages, over-relaxation rule and
stopping rule.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .._dispatch import values_known, while_loop
from .._xp import logsumexp, matvec, matvec_t, normal_exponent
from .dense import SinkhornResult, log_domain, sinkhorn_block, sinkhorn_log
from .plan import balanced, flushed_exp, plan_from_potentials
from .schedule import OMEGA, STAGE_TOL, STALL, epsilon_schedule, relaxation

__all__ = ["solve", "solve_plan"]



def solve(
    xp: Any,
    cost: Any,
    log_a: Any,
    log_b: Any,
    epsilon: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 10_000,
    check_every: int = 10,
    init: tuple[Any, Any] | None = None,
    scaling: bool = True,
) -> SinkhornResult:
    """Entropic OT potentials for ``cost`` (..., n, m); log weights each sum to one.

    ``init = (f, g)`` warm-starts the last stage directly (no epsilon scaling);
    ``scaling=False`` disables epsilon scaling. ``n_iter`` counts iterations
    over all stages and ``converged`` is True only if the last stage reached
    ``tol`` within ``max_iter`` iterations in all.

    Examples
    --------
    >>> import numpy as np
    >>> from softk._ot.plan import plan_from_potentials
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> w = np.log(np.array([0.5, 0.5]))
    >>> r = solve(np, C, w, w, 1e-3, tol=1e-12)
    >>> P = plan_from_potentials(np, C, w, w, r.f, r.g, 1e-3)
    >>> bool(r.converged), np.round(P, 6).tolist()
    (True, [[0.5, 0.0], [0.0, 0.5]])
    """
    return _solve(xp, cost, log_a, log_b, epsilon, tol, max_iter, check_every, init, scaling, False)


def solve_plan(
    xp: Any,
    cost: Any,
    log_a: Any,
    log_b: Any,
    epsilon: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 10_000,
    check_every: int = 10,
    init: tuple[Any, Any] | None = None,
    scaling: bool = True,
) -> tuple[SinkhornResult, Any]:
    """:func:`solve` and the plan ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``.

    Eagerly the plan is the solver's own kernel scaled in place,
    ``diag(u) K diag(v)`` (no exponential, no extra n x m array: the columns
    are exact to rounding, the rows within the reported error); traced, it is
    :func:`softk._ot.plan.plan_from_potentials`.
    """
    return _solve(xp, cost, log_a, log_b, epsilon, tol, max_iter, check_every, init, scaling, True)


def _solve(xp, cost, log_a, log_b, epsilon, tol, max_iter, check_every, init, scaling, want_plan):
    dev, dtype = device(cost), cost.dtype
    if init is None:
        f = xp.zeros(log_a.shape, dtype=dtype, device=dev)
        g = xp.zeros(log_b.shape, dtype=dtype, device=dev)
    else:
        f, g = init
    if not values_known(xp, cost):
        result = _traced(xp, cost, log_a, log_b, epsilon, tol, max_iter, check_every, f, g, scaling and init is None)
        if not want_plan:
            return result
        return result, plan_from_potentials(xp, cost, log_a, log_b, result.f, result.g, epsilon)
    schedule = [epsilon]
    if init is None and scaling:
        schedule = epsilon_schedule(epsilon, float(xp.max(cost) - xp.min(cost)))
    state = _Kernel(xp, cost, log_a, log_b, check_every, 0.25 * normal_exponent(xp, dtype))
    state.rebuild(schedule[0], f, g)
    err = math.inf
    for k, eps in enumerate(schedule):
        last = k == len(schedule) - 1
        if k > 0 and not last:
            state.sharpen(eps)
        elif k > 0:
            state.rebuild(eps, *state.potentials())
        err = state.iterate(tol if last else max(tol, STAGE_TOL), max_iter)
        if state.it >= max_iter and not last:
            # stopped in an earlier stage: make the columns exact at epsilon (a finite plan), report the rows
            state.rebuild(epsilon, *state.potentials())
            err = float(xp.max(xp.sum(xp.abs(matvec(xp, state.kern, state.v) - state.a), axis=-1)))
            break
    f, g = state.potentials()
    error = xp.asarray(err, dtype=dtype, device=dev)
    result = SinkhornResult(f, g, error, xp.asarray(state.it, device=dev), error <= tol)
    if not want_plan:
        return result
    state.absorb()  # the kernel becomes the plan, in place
    return result, state.kern


def _traced(xp, cost, log_a, log_b, epsilon, tol, max_iter, check_every, f, g, scaling) -> SinkhornResult:
    """The kernel strategy as one bounded loop (:func:`softk._ot.dense.log_domain`), for ``jax.jit``.

    Absorption needs concrete values, so each block of ``check_every`` iterations
    absorbs unconditionally: it rebuilds the kernel from ``(f, g)`` with its
    columns normalised to ``b`` in the log domain (one exponential pass, which
    is also an exact g-update), runs the remaining iterations as over-relaxed
    kernel updates (matrix-vector products) and folds the scalings back into ``(f, g)``.
    One exponential per block instead of two per iteration; a block whose
    scalings leave the finite range is run again in the log domain (a loop
    of at most one pass, so it stays one compiled program).
    """
    a, b = xp.exp(log_a), xp.exp(log_b)

    def block(f: Any, g: Any, eps: Any, steps: int, omega: Any) -> tuple:
        z = (f[..., :, None] - cost) / eps + log_a[..., :, None]
        top = xp.max(z, axis=-2, keepdims=True)
        kern = flushed_exp(xp, z - top)  # exact zeros: a clipped floor times a huge scaling would pollute the sums
        total = xp.sum(kern, axis=-2)
        kern = kern * (b / total)[..., None, :]
        g_new = -eps * (xp.log(total) + top[..., 0, :])  # the exact g-update
        u, v = xp.ones_like(f), xp.ones_like(g)  # (f, g_new) absorbed into the kernel
        for step in range(steps):  # over-relaxed as the eager iterations, the last v-update plain
            u = u * (a / (u * matvec(xp, kern, v))) ** omega
            t = matvec_t(xp, kern, u)
            v = b / t if step == steps - 1 else v * (b / (v * t)) ** omega
        rows = u * matvec(xp, kern, v)
        err = xp.max(xp.sum(xp.abs(rows - a), axis=-1))
        f_new, g_new = f + eps * xp.log(u), g_new + eps * xp.log(v)
        ok = xp.logical_and(xp.all(xp.isfinite(f_new)), xp.all(xp.isfinite(g_new)))
        ok = xp.logical_and(ok, xp.isfinite(err))

        def redo(state: tuple) -> tuple:  # a scaling left the finite range: this block in the log domain
            return (xp.asarray(True), *sinkhorn_block(xp, cost, log_a, log_b, a, f, g, eps, steps))

        start = (ok, xp.where(ok, f_new, f), xp.where(ok, g_new, g), xp.where(ok, err, xp.full_like(err, math.inf)))
        return while_loop(xp, lambda state: xp.logical_not(state[0]), redo, start, traceable=True)[1:]

    def g_update(f: Any, eps: float) -> Any:
        return -eps * logsumexp(xp, log_a[..., :, None] + (f[..., :, None] - cost) / eps, axis=-2)

    spread = xp.max(cost) - xp.min(cost) if scaling else None
    return log_domain(xp, block, g_update, f, g, spread, epsilon, tol=tol, max_iter=max_iter, check_every=check_every)


class _Kernel:
    """Kernel-mode state ``P = diag(u) K diag(v)``, ``K = a b^T exp((f + g - C) / eps)``."""

    def __init__(self, xp: Any, cost: Any, log_a: Any, log_b: Any, check_every: int, threshold: float):
        self.xp, self.cost, self.log_a, self.log_b = xp, cost, log_a, log_b
        self.a, self.b = xp.exp(log_a), xp.exp(log_b)
        self.check_every, self.threshold = check_every, threshold
        self.it = 0

    def potentials(self) -> tuple[Any, Any]:
        """``(f + eps log u, g + eps log v)``."""
        xp = self.xp
        return self.f + self.eps * xp.log(self.u), self.g + self.eps * xp.log(self.v)

    def rebuild(self, eps: float, f: Any, g: Any) -> None:
        """``K`` from potentials in the log domain, its columns normalised to ``b``."""
        xp = self.xp
        k = self.cost / (-eps)
        k += (f / eps + self.log_a)[..., :, None]
        k += (g / eps)[..., None, :]
        top = xp.max(k, axis=-2)
        k -= top[..., None, :]
        self.kern = flushed_exp(xp, k, overwrite=True)
        del k
        self.eps, self.f, self.g = eps, f, g - eps * (top + self.log_b)
        self._normalise_columns()
        self._recentre()

    def _recentre(self) -> None:
        """Shift ``(f + c, g - c)`` (the kernel is unchanged) so that neither potential drifts far
        from zero: stages at a huge epsilon (a huge cost entry) would otherwise leave ``f`` and
        ``g`` at +-1e17, and their rounding would then swamp ``f_i + g_j - C_ij``."""
        self.f, self.g = balanced(self.xp, self.f, self.g)

    def sharpen(self, eps: float) -> None:
        """Halve epsilon at fixed potentials: ``K <- K^2 / (a b^T)``, no exponential."""
        self.absorb()
        self.kern *= self.kern
        self.kern /= self.a[..., :, None]
        self.kern /= self.b[..., None, :]
        self.eps = eps
        self._normalise_columns()

    def _normalise_columns(self) -> None:
        xp = self.xp
        total = xp.sum(self.kern, axis=-2)
        self.kern *= (self.b / total)[..., None, :]
        self.g = self.g - self.eps * xp.log(total / self.b)
        self.u, self.v = xp.ones_like(self.f), xp.ones_like(self.g)

    def absorb(self) -> None:
        """Fold the scalings into the potentials and the kernel."""
        self.f, self.g = self.potentials()
        self.kern *= self.u[..., :, None]
        self.kern *= self.v[..., None, :]
        self.u, self.v = self.xp.ones_like(self.f), self.xp.ones_like(self.g)
        self._recentre()

    def iterate(self, tol: float, max_iter: int) -> float:
        """Over-relaxed kernel updates until the row error is ``<= tol``; returns it."""
        xp = self.xp
        a, b, kern = self.a, self.b, self.kern
        s = matvec(xp, kern, self.v)
        # the starting error: the first (plain) block's decrease already estimates the rate
        err, omega, cap = float(xp.max(xp.sum(xp.abs(self.u * s - a), axis=-1))), 1.0, OMEGA
        best, since = err, 0  # the lowest error and the iterations since it last fell by 1 %
        while self.it < max_iter:
            steps = min(self.check_every, max_iter - self.it)
            u, v = self.u, self.v
            for step in range(steps):
                u = a / s if omega == 1.0 else u * (a / (u * s)) ** omega
                t = matvec_t(xp, kern, u)
                # the block's last update is plain, so the columns are exact when checked
                v = b / t if omega == 1.0 or step == steps - 1 else v * (b / (v * t)) ** omega
                s = matvec(xp, kern, v)
            self.it += steps
            self.u, self.v = u, v
            previous, err = err, float(xp.max(xp.sum(xp.abs(u * s - a), axis=-1)))
            big = float(xp.max(xp.abs(xp.log(xp.concat([xp.reshape(u, (-1,)), xp.reshape(v, (-1,))])))))
            if not (math.isfinite(err) and math.isfinite(big)):
                # a kernel row underflowed: redo from the last absorbed potentials in the log domain
                r = sinkhorn_log(xp, self.cost, self.log_a, self.log_b, self.eps, tol=0.0, max_iter=steps, check_every=steps, init=(self.f, self.g))
                self.rebuild(self.eps, r.f, r.g)
                kern, err, omega = self.kern, float(r.error), 1.0
                s = matvec(xp, kern, self.v)
            if err <= tol:
                break
            best, since = (err, 0) if err < 0.99 * best else (best, since + steps)
            if since >= STALL:  # rounding rules: the caller measures and reports the error
                break
            if big > self.threshold:
                self.absorb()
                s = matvec(xp, kern, self.v)
            omega, cap = relaxation(omega, cap, previous, err, steps)
        return err
