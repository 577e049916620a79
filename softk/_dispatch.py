"""Find the framework glue for an array namespace, and loop through it.

The core never imports a framework. It asks this module for the glue module of
the namespace it is running on (``softk.backends.<name>``), which knows how that
framework registers a custom VJP and how it runs a data-dependent loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import array_api_compat as compat

State = TypeVar("State")

__all__ = ["glue_for", "while_loop", "values_known"]


def _glue_name(xp: Any) -> str:
    if compat.is_torch_namespace(xp):
        return "torch"
    if compat.is_jax_namespace(xp):
        return "jax"
    if compat.is_cupy_namespace(xp):
        return "cupy"
    # NumPy, array-api-strict and any other eager array-API library.
    return "numpy"


def glue_for(xp: Any) -> ModuleType:
    """The ``softk.backends`` module that registers gradients for namespace ``xp``."""
    name = f"softk.backends.{_glue_name(xp)}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name not in (name, "softk.backends"):
            raise  # the framework itself is missing a module: its own error says which
        raise ImportError(
            f"{name} is missing: softk is being imported from its source folder without being "
            "installed (the framework glue lives in backends/ and is installed as softk.backends). "
            "Install it with `python -m pip install -e .` from the checkout, or run from another folder."
        ) from err


def while_loop(
    xp: Any, cond: Callable[[State], Any], body: Callable[[State], State], state: State
) -> State:
    """Run ``while cond(state): state = body(state)`` the framework's way.

    ``cond`` returns a 0-d boolean array and must itself bound the number of
    iterations (every caller carries an iteration counter). Under JAX this is
    ``lax.while_loop`` (so it traces under ``jit``/``vmap``); elsewhere a
    Python loop.
    """
    return glue_for(xp).while_loop(cond, body, state)


def values_known(xp: Any, x: Any) -> bool:
    """Whether the values of ``x`` can be read now (False under ``jit`` tracing)."""
    return glue_for(xp).values_known(x)
