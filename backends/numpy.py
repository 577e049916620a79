"""Glue for eager libraries without autograd: NumPy, array-api-strict (and others).

Gradients come from :func:`softk.vjp`, which calls the core's backward directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from array_api_compat import array_namespace

__all__ = ["apply", "while_loop", "values_known", "on_false"]


def apply(op: Any, arrays: tuple, params: dict) -> Any:
    out, _ = op.forward(array_namespace(*arrays), *arrays, **params)
    return out


def while_loop(cond: Callable, body: Callable, state: Any, traceable: bool = False) -> Any:
    while bool(cond(state)):
        state = body(state)
    return state


def values_known(x: Any) -> bool:
    return True


def on_false(flag: Any, action: Callable[[], None]) -> None:
    if not bool(flag):
        action()
