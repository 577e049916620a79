"""The warning a solver raises when it stops at its iteration bound."""

from __future__ import annotations

import warnings
from typing import Any

from ._dispatch import glue_for

__all__ = ["NotConvergedWarning", "warn_if_not_converged", "warn_not_converged"]


class NotConvergedWarning(RuntimeWarning):
    """A solver hit ``max_iter`` before reaching its tolerance; the result is approximate."""


def warn_if_not_converged(
    xp: Any, converged: Any, what: str, *, error: Any = None, tol: float | None = None, rounding: float | None = None
) -> None:
    """Warn with :class:`NotConvergedWarning` when the 0-d boolean ``converged`` is False.

    The framework glue decides when the value is read: at once on eager
    libraries, through ``jax.debug.callback`` under JAX (so also inside ``jit``),
    and where PyTorch's values cannot be read at once (``torch.compile``,
    ``torch.func.vmap``) through the glue's ``warn_unread``.
    With ``error`` and ``tol`` the message gives both; ``rounding`` (about the
    smallest error the dtype allows at this epsilon) adds advice when it is
    what stops the solver.
    """
    glue = glue_for(xp)
    unread = getattr(glue, "warn_unread", None)
    if unread is not None and unread(converged, what, tol, rounding):
        return
    if error is not None and not glue.values_known(error):
        error = None  # traced: the message goes without the number
    glue.on_false(converged, lambda: warn_not_converged(what, error, tol, rounding))


def warn_not_converged(what: str, error: Any = None, tol: float | None = None, rounding: float | None = None) -> None:
    """Raise the :class:`NotConvergedWarning` of solver ``what`` (its ``error``, where known)."""
    detail = ""
    if error is not None and tol is not None:
        detail = f" (marginal error {float(error):.3g} > tol {tol:.3g})"
    advice = "raise max_iter, tol or epsilon"
    if rounding is not None and tol is not None and rounding > 0.1 * tol:
        advice = (f"the dtype's rounding of cost / epsilon limits the error to about {rounding:.2g} here: "
                  "use float64, a larger epsilon or a larger tol")
    warnings.warn(f"{what} did not converge{detail}: {advice}", NotConvergedWarning, stacklevel=2)
