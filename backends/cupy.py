"""Glue for CuPy: eager like NumPy; arrays stay on their GPU (no host round trip).

Gradients come from :func:`softk.vjp`. The loop's stopping test reads one
0-d device array per check, which is the only device-to-host transfer.
"""

from __future__ import annotations

from .numpy import apply, on_false, values_known, while_loop

__all__ = ["apply", "while_loop", "values_known", "on_false"]
