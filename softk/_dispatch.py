"""Find the framework glue for an array namespace, and loop through it.

The core never imports a framework. It asks this module for the glue module of
the namespace it is running on (``softk.backends.<name>``), which knows how that
framework registers a custom VJP and how it runs a data-dependent loop.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import array_api_compat as compat

State = TypeVar("State")

__all__ = ["glue_for", "while_loop", "values_known", "host_call", "preload"]


def _glue_name(xp: Any) -> str:
    if compat.is_torch_namespace(xp):
        return "torch"
    if compat.is_jax_namespace(xp):
        return "jax"
    if compat.is_cupy_namespace(xp):
        return "cupy"
    # NumPy, array-api-strict and any other eager array-API library.
    return "numpy"


_GLUE: dict[str, ModuleType] = {}  # imported once: a lookup per call is all the hot paths pay


def glue_for(xp: Any) -> ModuleType:
    """The ``softk.backends`` module that registers gradients for namespace ``xp``."""
    name = _glue_name(xp)
    glue = _GLUE.get(name)
    if glue is None:
        glue = _GLUE[name] = _import_glue(f"softk.backends.{name}")
    return glue


FRAMEWORKS = ("torch", "jax", "cupy")


def preload() -> None:
    """Import the glue of every framework already imported, and of any imported later right
    after it (softk's own import calls this), so that a first call traced by
    ``torch.compile(fullgraph=True)`` or ``jax.jit`` finds it imported: the tracers cannot
    follow an import."""
    for framework in FRAMEWORKS:
        if framework in sys.modules:
            _GLUE[framework] = _import_glue(f"softk.backends.{framework}")
    if not any(isinstance(f, _GlueAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _GlueAfterImport())


class _GlueAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when a framework is first imported, wraps its loader so that the
    framework's softk glue is imported as soon as the framework itself has finished importing."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in FRAMEWORKS or name in _GLUE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        exec_module = spec.loader.exec_module

        def exec_then_glue(module: ModuleType) -> None:
            exec_module(module)
            try:
                _GLUE[name] = _import_glue(f"softk.backends.{name}")
            except ImportError:  # left to the first call, which says what is missing
                pass

        spec.loader.exec_module = exec_then_glue  # type: ignore[method-assign]
        return spec


def _import_glue(name: str) -> ModuleType:
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
    xp: Any, cond: Callable[[State], Any], body: Callable[[State], State], state: State, *, traceable: bool = False
) -> State:
    """Run ``while cond(state): state = body(state)`` the framework's way.

    ``cond`` returns a 0-d boolean array and must itself bound the number of
    iterations (every caller carries an iteration counter). Under JAX this is
    ``lax.while_loop`` (so it traces under ``jit``/``vmap``); elsewhere a
    Python loop. ``traceable=True`` marks a loop that ``torch.compile`` traces
    as one graph (PyTorch's ``while_loop`` operator, so ``fullgraph=True``
    works); other loops run as graph breaks there (the operator's compiler does
    not take every loop body yet); its ``state`` is a flat tuple of arrays.
    """
    return glue_for(xp).while_loop(cond, body, state, traceable)


def values_known(xp: Any, x: Any) -> bool:
    """Whether the values of ``x`` can be read now (False under ``jit`` tracing)."""
    return glue_for(xp).values_known(x)


def host_call(xp: Any, fn: Callable[..., tuple], outputs: tuple[tuple[tuple[int, ...], Any], ...], *arrays: Any) -> tuple | None:
    """``fn(*arrays)`` run on the host, on the arrays' values; None where it cannot run now.

    ``fn`` is array-API code that reads values (a graph algorithm on host lists)
    and returns a tuple of arrays with the ``(shape, dtype)`` of ``outputs``; its
    outputs are constants to autodiff. Libraries whose values can be read (NumPy,
    PyTorch, CuPy, array-api-strict) call it directly; under JAX (eager, ``jit``,
    ``vmap``, ``grad``) the glue runs it through ``jax.pure_callback`` on NumPy
    copies (a device-to-host transfer on an accelerator), and PyTorch's glue as a
    graph break under ``torch.compile``; where the values are unknown and the
    glue has no ``host_call`` it returns None.
    """
    glue = glue_for(xp)
    call = getattr(glue, "host_call", None)
    if call is not None:
        return call(fn, outputs, *arrays)
    return fn(*arrays) if all(glue.values_known(x) for x in arrays) else None
