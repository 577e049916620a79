"""The warning a solver raises when it stops at its iteration bound."""

from __future__ import annotations

import warnings
from typing import Any

from ._dispatch import glue_for

__all__ = ["NotConvergedWarning", "warn_if_not_converged"]


class NotConvergedWarning(RuntimeWarning):
    """A solver hit ``max_iter`` before reaching its tolerance; the result is approximate."""


def warn_if_not_converged(xp: Any, converged: Any, what: str) -> None:
    """Warn with :class:`NotConvergedWarning` when the 0-d boolean ``converged`` is False.

    The framework glue decides when the value is read: at once on eager
    libraries, through ``jax.debug.callback`` under JAX (so also inside ``jit``).
    """
    glue_for(xp).on_false(converged, lambda: _warn(what))


def _warn(what: str) -> None:
    warnings.warn(f"{what} did not converge: raise max_iter, tol or epsilon", NotConvergedWarning, stacklevel=2)
