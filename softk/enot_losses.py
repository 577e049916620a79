"""ENOT's cost and losses on the array API: the expectile loss, the dual and map losses, the regression loss.

With ``T^ = sg(T(x))`` (``sg``: stop gradient) and ``g^c(x) = c(x, T^) - g(T^)``:

* dual loss (for ``g``): ``-E[g(y) + g^c(x)] + lambda * (E L(sg(g^c(x) - c(x, y)) + g(y))
  + E L(sg(g(y) - c(x, y)) + g^c(x)))`` with the expectile loss
  ``L(u) = tau u^2`` for ``u >= 0`` and ``(1 - tau) u^2`` otherwise;
* map loss (for ``T``): ``E[c(x, T(x)) - g(T(x))]``, ``g`` held fixed, or, for
  the amortised baselines, the regression ``E |T(x) - sg(y^)|^2 / 2`` onto a
  solved conjugate point ``y^``.

The losses take the values of the potentials, so each framework's autograd
differentiates them; the stop-gradient is the framework glue's.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import array_api_compat as compat

from ._dispatch import _glue_name

__all__ = ["PowerCost", "expectile_loss", "dual_value", "dual_loss", "cost_scale", "map_loss", "regression_loss",
           "stop_gradient"]


def expectile_loss(u: Any, tau: float) -> Any:
    """The asymmetric square ``tau u^2`` where ``u >= 0``, ``(1 - tau) u^2`` where ``u < 0``.

    Examples
    --------
    >>> import numpy as np
    >>> expectile_loss(np.array([-2.0, 0.0, 3.0]), 0.9).round(6).tolist()
    [0.4, 0.0, 8.1]
    """
    xp = compat.array_namespace(u)
    return xp.where(u >= 0, tau * u * u, (1.0 - tau) * u * u)


class PowerCost:
    """The cost ``c(x, y) = |x - y|^p / p`` row by row (``p = 2``: half the squared distance).

    ``twist(x, grad)`` is the map of a potential with gradient ``grad``,
    ``x - (grad h)^{-1}(grad)``, where ``(grad h)^{-1}(w) = |w|^{1/(p-1) - 1} w``.

    Examples
    --------
    >>> import numpy as np
    >>> c = PowerCost(2.0)
    >>> c(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])).tolist()
    [12.5]
    >>> c.twist(np.array([[1.0, 1.0]]), np.array([[0.5, -0.5]])).tolist()
    [[0.5, 1.5]]
    """

    def __init__(self, p: float = 2.0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1.0 < p < math.inf:
            raise ValueError(f"cost power p must be a real number > 1, got {p!r}")
        self.p = float(p)

    def __call__(self, x: Any, y: Any) -> Any:
        xp = compat.array_namespace(x, y)
        sq = xp.sum((x - y) ** 2, axis=-1)
        if self.p == 2.0:
            return 0.5 * sq
        return _safe_norm(xp, sq) ** self.p / self.p

    def twist(self, x: Any, grad: Any) -> Any:
        if self.p == 2.0:
            return x - grad
        xp = compat.array_namespace(x, grad)
        norm = _safe_norm(xp, xp.sum(grad * grad, axis=-1, keepdims=True))
        return x - norm ** (1.0 / (self.p - 1.0) - 1.0) * grad

    def __repr__(self) -> str:
        return f"PowerCost(p={self.p:g})"


def _safe_norm(xp: Any, sq: Any) -> Any:
    """``sqrt(sq)`` with a finite gradient at 0 (``sq`` floored at the dtype's tiny)."""
    return xp.sqrt(xp.maximum(sq, xp.full_like(sq, xp.finfo(sq.dtype).tiny ** 0.5)))


def stop_gradient(x: Any) -> Any:
    """``x`` without gradient: the framework glue's stop-gradient (the identity for NumPy and friends)."""
    name = _glue_name(compat.array_namespace(x))
    if name in ("torch", "jax"):
        return importlib.import_module(f"softk.backends.enot_{name}").stop_gradient(x)
    return x


def dual_value(g_y: Any, g_t: Any, c_xt: Any) -> Any:
    """The dual estimate of the transport cost, ``E g(y) + E g^c(x)`` with ``g^c(x) = c(x, T^) - g(T^)``."""
    xp = compat.array_namespace(g_y, g_t, c_xt)
    return xp.mean(g_y) + xp.mean(c_xt - g_t)


def dual_loss(
    g_y: Any, g_t: Any, c_xt: Any, c_xy: Any, *, tau: float, expectile_weight: float, scale: Any = 1.0
) -> Any:
    """The loss of ``g`` from ``g(y)``, ``g(T^)``, ``c(x, T^)`` and ``c(x, y)`` (each of shape (n,)).

    The expectile term's weight is ``expectile_weight / scale`` (see :func:`cost_scale`).

    Examples
    --------
    >>> import numpy as np
    >>> g_y, g_t, c_xt, c_xy = (np.array(v) for v in ([1.0, 0.0], [0.5, 0.2], [0.1, 0.3], [2.0, 1.0]))
    >>> float(dual_loss(g_y, g_t, c_xt, c_xy, tau=0.9, expectile_weight=0.0))  # -(0.5 + -0.15)
    -0.35
    """
    xp = compat.array_namespace(g_y, g_t, c_xt, c_xy)
    g_c = c_xt - g_t
    loss = -(xp.mean(g_y) + xp.mean(g_c))
    if expectile_weight == 0.0:
        return loss
    reg_y = expectile_loss(stop_gradient(g_c - c_xy) + g_y, tau)
    reg_x = expectile_loss(stop_gradient(g_y - c_xy) + g_c, tau)
    return loss + expectile_weight / scale * (xp.mean(reg_y) + xp.mean(reg_x))


def cost_scale(cost: Any, x: Any, y: Any) -> Any:
    """``E c(x - mean x, y - mean y)`` over the batch: the size of the cost, unchanged by shifts of either side.

    The dual terms scale like the cost and the expectile term like its square, so
    dividing the expectile weight by this makes the loss scale-free: a change
    of units, or of dimension (the cost grows like ``dim``), leaves the balance
    of the two terms as it was.

    Examples
    --------
    >>> import numpy as np
    >>> x, y = np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[10.0, 1.0], [10.0, -1.0]])
    >>> float(cost_scale(PowerCost(2.0), x, y))  # mean of |(-1, 0) - (0, 1)|^2 / 2 and |(1, 0) - (0, -1)|^2 / 2
    1.0
    """
    xp = compat.array_namespace(x, y)
    return stop_gradient(xp.mean(cost(x - xp.mean(x, axis=0), y - xp.mean(y, axis=0))))


def map_loss(c_xt: Any, g_t: Any) -> Any:
    """The loss of the map, ``E[c(x, T(x)) - g(T(x))]``, from ``c(x, T(x))`` and ``g(T(x))``."""
    xp = compat.array_namespace(c_xt, g_t)
    return xp.mean(c_xt - g_t)


def regression_loss(t: Any, t_hat: Any) -> Any:
    """The amortisation loss ``E |T(x) - sg(y^)|^2 / 2`` of a map ``t`` onto solved conjugate points ``t_hat``.

    Examples
    --------
    >>> import numpy as np
    >>> float(regression_loss(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 2.0]])))  # (1 + 4) / 4
    1.25
    """
    xp = compat.array_namespace(t, t_hat)
    return 0.5 * xp.mean(xp.sum((t - stop_gradient(t_hat)) ** 2, axis=-1))
