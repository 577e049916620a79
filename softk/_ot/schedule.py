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

__all__ = ["STAGE_TOL", "OMEGA", "WARMUP", "MAX_STAGES", "INNER_TOL", "STALL", "epsilon_schedule", "relaxation"]

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


def relaxation(omega: float, cap: float, previous: float, err: float, steps: int) -> tuple[float, float]:
    """Over-relaxation factor for the next block, and its cap, from two errors ``steps`` iterations apart.

    The optimal factor is ``2 / (1 + sqrt(1 - eta))``, ``eta`` the convergence
    rate of plain Sinkhorn (Thibault et al. 2017; Lehmann et al. 2021). ``eta``
    is estimated from the rate ``rho`` per iteration observed at factor ``w`` by
    Young's SOR relation ``(rho + w - 1)^2 = eta rho w^2`` (exact for ``w``
    below the optimum; the estimate grows as the fast modes die out). The
    factor never decreases unless the error grows; then it is halved towards 1
    and capped there. Start with ``cap = OMEGA``.

    >>> relaxation(1.0, OMEGA, 1.0, 0.5, 1)   # rate 1/2 at w = 1: eta = 1/2
    (1.17157287525381, 1.9)
    """
    if not (math.isfinite(previous) and math.isfinite(err)) or previous <= 0.0 or err <= 0.0:
        return omega, cap
    if err > previous:
        omega = 1.0 + 0.5 * (omega - 1.0)
        return omega, omega
    rho = (err / previous) ** (1.0 / steps)
    eta = min(1.0, (rho + omega - 1.0) ** 2 / (rho * omega * omega))
    best = 2.0 / (1.0 + math.sqrt(1.0 - eta))
    return min(cap, max(omega, best)), cap
