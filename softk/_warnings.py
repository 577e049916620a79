"""The warning a solver raises when it stops at its iteration bound."""

from __future__ import annotations

import warnings
from typing import Any

from ._dispatch import values_known

__all__ = ["NotConvergedWarning", "warn_if_not_converged"]


class NotConvergedWarning(RuntimeWarning):
    """A solver hit ``max_iter`` before reaching its tolerance; the result is approximate."""


def warn_if_not_converged(xp: Any, converged: Any, what: str) -> None:
    """Warn (eagerly; under ``jit`` nothing can be read) when ``converged`` is False."""
    if values_known(xp, converged) and not bool(converged):
        warnings.warn(f"{what} did not converge: raise max_iter or tol, or epsilon", NotConvergedWarning, stacklevel=4)
