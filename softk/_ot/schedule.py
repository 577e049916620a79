"""What every Sinkhorn strategy shares: the epsilon schedule, the over-relaxation rule, the constants.

Each constant has one meaning, used by the dense, kernel and online strategies alike:

* ``STAGE_TOL``: the row-marginal L1 error that ends an intermediate epsilon
  stage (the last stage runs to the caller's ``tol``);
* ``OMEGA``: the largest over-relaxation factor (Thibault et al. 2017);
* ``WARMUP``: plain iterations run at the start of a stage before the
  over-relaxation factor is first estimated;
* ``INNER_TOL``: the strategies stop at this fraction of the caller's ``tol``
  by their own estimate; the rest is left to the rounding of the returned
  plan and to its columns, which the estimate does not see;
* ``STALL``: iterations without a 1 % decrease of the error after which a
  stage of the kernel strategy stops (rounding rules it then: more iterations
  only spend time, and in float32 let its scalings drift from the kernel they
  describe).

The few-target Newton strategy (:mod:`softk._ot.newton`) has its own
continuation (it measures relative column errors, not row L1 errors).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["STAGE_TOL", "OMEGA", "WARMUP", "MAX_STAGES", "INNER_TOL", "STALL", "FLOATS", "epsilon_schedule", "relaxation"]

STAGE_TOL = 1e-2  # row-marginal L1 error that ends an intermediate epsilon stage
OMEGA = 1.9  # largest over-relaxation factor (measured best at eps 1e-3 to 1e-4 on [0, 1] costs)
WARMUP = 4  # plain iterations per stage before the over-relaxation factor is estimated
MAX_STAGES = 200  # epsilon halvings at most (a spread of 2^200 epsilon)
INNER_TOL = 0.5  # the strategies' own stopping test, as a fraction of the tol the returned plan must meet
STALL = 500  # iterations without a 1 % decrease of the error that end a stage


def epsilon_schedule(epsilon: float, spread: float) -> list[float]:
    """``epsilon 2^k`` for ``k = K, ..., 1, 0``, the first at most ``spread`` (no stage above it).

    >>> epsilon_schedule(0.1, 0.5)
    [0.4, 0.2, 0.1]
    """
    if not spread > epsilon:  # also a NaN spread
        return [epsilon]
    stages = math.log2(spread / epsilon) if math.isfinite(spread / epsilon) else MAX_STAGES
    return [epsilon * 2.0**k for k in range(min(int(stages), MAX_STAGES), -1, -1)]


class _Floats:
    """The few namespace functions :func:`relaxation` uses, on Python floats (the eager
    strategies decide on the host; traced loops pass their array namespace)."""

    sqrt = staticmethod(math.sqrt)
    minimum = staticmethod(min)
    maximum = staticmethod(max)
    isfinite = staticmethod(math.isfinite)

    @staticmethod
    def ones_like(x: float) -> float:
        return 1.0

    @staticmethod
    def where(condition: bool, x: float, y: float) -> float:
        return x if condition else y


FLOATS = _Floats()


def relaxation(omega: Any, cap: Any, previous: Any, err: Any, steps: int, xp: Any = FLOATS) -> tuple[Any, Any]:
    """Over-relaxation factor for the next block, and its cap, from two errors ``steps`` iterations apart.

    The optimal factor is ``2 / (1 + sqrt(1 - eta))``, ``eta`` the convergence
    rate of plain Sinkhorn (Thibault et al. 2017; Lehmann et al. 2021). ``eta``
    is estimated from the rate ``rho`` per iteration observed at factor ``w`` by
    Young's SOR relation ``(rho + w - 1)^2 = eta rho w^2`` (exact for ``w``
    below the optimum; the estimate grows as the fast modes die out). The
    factor never decreases unless the error grows; then it is halved towards 1
    and capped there. Start with ``cap = OMEGA``. Python floats by default; a
    traced loop passes 0-d arrays and their namespace ``xp``.

    >>> relaxation(1.0, OMEGA, 1.0, 0.5, 1)   # rate 1/2 at w = 1: eta = 1/2
    (1.17157287525381, 1.9)
    """
    one = xp.ones_like(omega)  # an array where omega is one (a scalar there fails under torch.compile's loops)
    valid = xp.isfinite(previous) & xp.isfinite(err) & (previous > 0.0) & (err > 0.0)
    grew = valid & (err > previous)
    halved = 1.0 + 0.5 * (omega - 1.0)
    rho = (xp.where(valid, err, one) / xp.where(valid, previous, one)) ** (1.0 / steps)
    eta = xp.minimum((rho + omega - 1.0) ** 2 / (rho * omega * omega), one)
    best = xp.minimum(cap, xp.maximum(omega, 2.0 / (1.0 + xp.sqrt(1.0 - eta))))
    return xp.where(grew, halved, xp.where(valid, best, omega)), xp.where(grew, halved, cap)
