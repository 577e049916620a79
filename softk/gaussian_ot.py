"""Optimal transport between two Gaussians in closed form, and the L2-UVP error of a learnt map.

For ``N(m0, S0)`` and ``N(m1, S1)`` the squared-distance OT map is affine,
``T*(x) = m1 + A (x - m0)`` with ``A = S0^{-1/2} (S0^{1/2} S1 S0^{1/2})^{1/2} S0^{-1/2}``,
and ``W2^2 = |m0 - m1|^2 + tr(S0 + S1 - 2 (S0^{1/2} S1 S0^{1/2})^{1/2})``.
L2-UVP is ``100 E|T(x) - T*(x)|^2 / Var(T*(x))`` (``Var``: the total variance,
``tr Cov``), a percentage of unexplained variance.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as compat

__all__ = ["gaussian_map", "gaussian_w2", "l2_uvp"]


def _sym_power(xp: Any, s: Any, power: float) -> Any:
    """``s^power`` of a symmetric positive definite matrix by its eigendecomposition."""
    vals, vecs = xp.linalg.eigh(s)
    vals = xp.maximum(vals, xp.zeros_like(vals))
    return (vecs * vals**power) @ xp.matrix_transpose(vecs)


def gaussian_map(mean0: Any, cov0: Any, mean1: Any, cov1: Any) -> tuple[Any, Any]:
    """``(A, b)`` with ``T*(x) = x @ A + b`` (``A`` symmetric) the OT map from ``N(mean0, cov0)`` to ``N(mean1, cov1)``.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = gaussian_map(np.zeros(2), np.eye(2), np.ones(2), 4.0 * np.eye(2))
    >>> a.round(6).tolist(), b.round(6).tolist()
    ([[2.0, 0.0], [0.0, 2.0]], [1.0, 1.0])
    """
    xp = compat.array_namespace(mean0, cov0, mean1, cov1)
    root0, inv_root0 = _sym_power(xp, cov0, 0.5), _sym_power(xp, cov0, -0.5)
    a = inv_root0 @ _sym_power(xp, root0 @ cov1 @ root0, 0.5) @ inv_root0
    a = 0.5 * (a + xp.matrix_transpose(a))
    return a, mean1 - mean0 @ a


def gaussian_w2(mean0: Any, cov0: Any, mean1: Any, cov1: Any) -> Any:
    """The squared 2-Wasserstein distance between ``N(mean0, cov0)`` and ``N(mean1, cov1)``.

    Examples
    --------
    >>> import numpy as np
    >>> round(float(gaussian_w2(np.zeros(2), np.eye(2), np.ones(2), 4.0 * np.eye(2))), 6)  # 2 + 2 * (2 - 1)^2
    4.0
    """
    xp = compat.array_namespace(mean0, cov0, mean1, cov1)
    root0 = _sym_power(xp, cov0, 0.5)
    cross = _sym_power(xp, root0 @ cov1 @ root0, 0.5)
    return xp.sum((mean0 - mean1) ** 2) + xp.linalg.trace(cov0 + cov1 - 2.0 * cross)


def l2_uvp(t: Any, t_star: Any) -> Any:
    """``100 * mean |t - t_star|^2 / mean |t_star - mean(t_star)|^2`` over rows of ``(n, d)`` arrays.

    Examples
    --------
    >>> import numpy as np
    >>> t_star = np.array([[0.0, 0.0], [2.0, 0.0]])
    >>> float(l2_uvp(t_star + np.array([0.1, 0.0]), t_star))  # 0.01 / 1
    1.0...
    """
    xp = compat.array_namespace(t, t_star)
    centred = t_star - xp.mean(t_star, axis=0)
    return 100.0 * xp.mean(xp.sum((t - t_star) ** 2, axis=-1)) / xp.mean(xp.sum(centred**2, axis=-1))
