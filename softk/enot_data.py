"""ENOT's data side: the standardising change of coordinates, batch drawing and checks, network initialisation."""

from __future__ import annotations

import math
import random
from typing import Any

import array_api_compat as compat

__all__ = ["Standardizer", "check_batch", "draw_batch", "init_mlp"]


class Standardizer:
    """Affine change of coordinates ``x~ = (x - mx) / s``, ``y~ = (y - my) / s`` under which ENOT trains.

    For ``c(x, y) = |x - y|^p / p`` a common scale ``s`` multiplies the cost by
    ``s^p``, and a common shift changes nothing; for ``p = 2`` each side may
    also be centred on its own mean (``d = mx - my`` adds ``<x~ - y~, d> s + |d|^2 / 2``
    to the cost, whose mean under any coupling is ``|d|^2 / 2``). The map and the
    potentials go back by ``T(x) = my + s T~(x~)``, ``f(x) = s^p f~(x~) + <d, x>``,
    ``g(y) = s^p g~(y~) - <d, y - my>``. The identity when ``x``, ``y`` are ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> z = Standardizer(np.array([[0.0, 0.0], [2.0, 2.0]]), np.array([[5.0, 5.0], [7.0, 7.0]]), p=2.0)
    >>> z.scale, z.x_in(np.array([[2.0, 2.0]])).tolist(), z.t_out(np.array([[0.0, 1.0]])).tolist()
    (1.0, [[1.0, 1.0]], [[6.0, 7.0]])
    """

    def __init__(self, x: Any = None, y: Any = None, *, p: float = 2.0):
        self.p, self.identity = p, x is None
        if self.identity:
            return
        xp = compat.array_namespace(x, y)
        self.mx, self.my = xp.mean(x, axis=0), xp.mean(y, axis=0)
        if p != 2.0:
            self.mx = self.my = 0.5 * (self.mx + self.my)
        spread = xp.mean(xp.sum((x - self.mx) ** 2, axis=-1)) + xp.mean(xp.sum((y - self.my) ** 2, axis=-1))
        self.scale = float(xp.sqrt(spread / (2 * x.shape[-1])))

    def x_in(self, x: Any) -> Any:
        return x if self.identity else (x - self.mx) / self.scale

    def y_in(self, y: Any) -> Any:
        return y if self.identity else (y - self.my) / self.scale

    def t_out(self, t: Any) -> Any:
        return t if self.identity else self.my + self.scale * t

    def f_out(self, f_values: Any, x: Any) -> Any:
        if self.identity:
            return f_values
        return self.scale**self.p * f_values + _rowdot(x, self.mx - self.my)

    def g_out(self, g_values: Any, y: Any) -> Any:
        if self.identity:
            return g_values
        return self.scale**self.p * g_values - _rowdot(y - self.my, self.mx - self.my)


def _rowdot(x: Any, v: Any) -> Any:
    xp = compat.array_namespace(x, v)
    return xp.sum(x * v, axis=-1)


def check_batch(name: str, batch: Any, n: int, dim: int) -> None:
    """A sampler's batch must be a real floating array of shape ``(n, dim)`` without NaN or inf."""
    try:
        xp = compat.array_namespace(batch)
    except TypeError:
        raise TypeError(f"{name} must return an array, got {type(batch).__name__}") from None
    if not xp.isdtype(batch.dtype, "real floating"):
        raise TypeError(f"{name} must return a real floating array (float32 or float64), got {batch.dtype}")
    if tuple(batch.shape) != (n, dim):
        raise ValueError(f"{name} must return an array of shape {(n, dim)} (batch_size, dim), got {tuple(batch.shape)}")
    if not bool(xp.all(xp.isfinite(batch))):
        raise ValueError(f"{name} returned a batch with NaN or inf entries")


def draw_batch(name: str, sampler: Any, rng: Any, n: int, dim: int) -> Any:
    """``sampler(rng, n)``, or ``n`` rows drawn with replacement when ``sampler`` is an array; checked."""
    if callable(sampler):
        batch = sampler(rng, n)
    elif compat.is_array_api_obj(sampler):
        batch = sampler[rng.integers(0, sampler.shape[0], size=n)]
    else:
        raise TypeError(
            f"{name} must be a callable sampler(rng, n) or an array of samples, got {type(sampler).__name__}"
        )
    check_batch(name, batch, n, dim)
    return batch


def init_mlp(xp: Any, dim: int, hidden: tuple[int, ...], *, quadratic: bool, seed: int, dtype: Any) -> list:
    """Parameters ``[W1, b1, ..., Wk, bk(, Q)]`` of a scalar MLP ``R^dim -> R`` (``W`` is (in, out)).

    Entries are uniform on ``+-1/sqrt(fan_in)`` (PyTorch's ``nn.Linear`` rule)
    from ``random.Random(seed)``, so every framework starts from the same
    network; the quadratic term ``Q`` (``x^T Q x / 2`` with ``Q`` symmetrised)
    starts at zero.
    """
    rng = random.Random(seed)
    sizes = (dim, *hidden, 1)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        w = [rng.uniform(-bound, bound) for _ in range(fan_in * fan_out)]
        b = [rng.uniform(-bound, bound) for _ in range(fan_out)]
        params += [xp.reshape(xp.asarray(w, dtype=dtype), (fan_in, fan_out)), xp.asarray(b, dtype=dtype)]
    if quadratic:
        params.append(xp.zeros((dim, dim), dtype=dtype))
    return params
