"""ENOT: expectile-regularised neural optimal transport (Buzun, Bobrin and Dylov, 2024).

A potential ``g`` on the target side and a map ``T`` learnt from samples. With
``T^ = sg(T(x))`` (``sg``: stop gradient) and ``g^c(x) = c(x, T^) - g(T^)``:

* dual loss (for ``g``): ``-E[g(y) + g^c(x)] + lambda * (E L(sg(g^c(x) - c(x, y)) + g(y))
  + E L(sg(g(y) - c(x, y)) + g^c(x)))`` with the expectile loss
  ``L(u) = tau u^2`` for ``u >= 0`` and ``(1 - tau) u^2`` otherwise;
* map loss (for ``T``): ``E[c(x, T(x)) - g(T(x))]``, ``g`` held fixed.

The losses are written here once, on the array API, from the values of the
potentials; each framework's own autograd differentiates them. ``T`` is the
twist map of a potential ``f``: ``T(x) = x - (grad h)^{-1}(grad f(x))`` for a
cost ``c(x, y) = h(x - y)``, i.e. ``x - grad f(x)`` for ``h(z) = |z|^2 / 2``.
The trainers (``softk.backends.enot_torch``, ``softk.backends.enot_jax``)
compute ``grad f`` with their autograd and run the loop :func:`fit_loop`.
"""

from __future__ import annotations

import importlib
import math
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import array_api_compat as compat

from ._dispatch import _glue_name

__all__ = [
    "ENOT", "Trainer", "PowerCost", "Standardizer", "expectile_loss", "dual_value", "dual_loss", "map_loss",
    "check_options", "check_batch", "draw_batch", "scheduled_lr", "init_mlp", "fit_loop", "PAPER_DEFAULTS",
]

#: The paper's defaults: expectile level, its weight, Adam, four ELU layers of 128.
PAPER_DEFAULTS = dict(tau=0.99, expectile_weight=1.0, lr=3e-4, betas=(0.9, 0.9), hidden=(128, 128, 128, 128))


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


def _stop_gradient(x: Any) -> Any:
    """``x`` without gradient: the framework glue's stop-gradient (the identity for NumPy and friends)."""
    name = _glue_name(compat.array_namespace(x))
    if name in ("torch", "jax"):
        return importlib.import_module(f"softk.backends.enot_{name}").stop_gradient(x)
    return x


def dual_value(g_y: Any, g_t: Any, c_xt: Any) -> Any:
    """The dual estimate of the transport cost, ``E g(y) + E g^c(x)`` with ``g^c(x) = c(x, T^) - g(T^)``."""
    xp = compat.array_namespace(g_y, g_t, c_xt)
    return xp.mean(g_y) + xp.mean(c_xt - g_t)


def dual_loss(g_y: Any, g_t: Any, c_xt: Any, c_xy: Any, *, tau: float, expectile_weight: float) -> Any:
    """The loss of ``g`` from ``g(y)``, ``g(T^)``, ``c(x, T^)`` and ``c(x, y)`` (each of shape (n,)).

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
    reg_y = expectile_loss(_stop_gradient(g_c - c_xy) + g_y, tau)
    reg_x = expectile_loss(_stop_gradient(g_y - c_xy) + g_c, tau)
    return loss + expectile_weight * (xp.mean(reg_y) + xp.mean(reg_x))


def map_loss(c_xt: Any, g_t: Any) -> Any:
    """The loss of the map, ``E[c(x, T(x)) - g(T(x))]``, from ``c(x, T(x))`` and ``g(T(x))``."""
    xp = compat.array_namespace(c_xt, g_t)
    return xp.mean(c_xt - g_t)


def check_options(
    *, tau: Any, expectile_weight: Any, lr: Any, lr_schedule: Any, batch_size: Any, conjugate_steps: Any
) -> None:
    """``ValueError``/``TypeError`` naming the argument for a bad trainer option."""
    from ._validate import check_choice, check_int, check_positive_float

    check_choice("lr_schedule", lr_schedule, ("constant", "cosine"))
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be a number in (0, 1), got {tau!r}")
    if isinstance(expectile_weight, bool) or not isinstance(expectile_weight, (int, float)) or not (
        0.0 <= expectile_weight < math.inf
    ):
        raise ValueError(f"expectile_weight must be a finite number >= 0, got {expectile_weight!r}")
    check_positive_float("lr", lr)
    check_int("batch_size", batch_size, 1, 2**31)
    check_int("conjugate_steps", conjugate_steps, 0, 10**6)


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


def scheduled_lr(lr: float, schedule: str, i: int, steps: int) -> float:
    """The learning rate at step ``i`` of ``steps``: ``lr``, or ``lr (1 + cos(pi i / steps)) / 2`` for ``"cosine"``."""
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * i / steps))
    return lr


def fit_loop(
    step: Callable[[int], Any], steps: int, *, progress: bool | None, check_every: int,
    loss_values: Callable[[Any], tuple],
) -> list[tuple[int, float, float]]:
    """Run ``step(i)`` for ``i < steps``; read the losses every ``check_every`` steps.

    ``step`` returns the framework's loss pair, which ``loss_values`` turns into
    Python floats (a host sync, hence only every ``check_every`` steps). A
    non-finite loss stops training with ``FloatingPointError``. Returns the
    history ``[(step, dual loss, map loss), ...]``. ``progress``: a tqdm bar
    (or a printed line every tenth of the run without tqdm); ``None`` shows it
    from 1,000 steps on.
    """
    show = steps >= 1000 if progress is None else bool(progress)
    bar = _progress_bar(steps) if show else None
    history, start = [], time.perf_counter()
    for i in range(steps):
        losses = step(i)
        if (i + 1) % check_every and i + 1 != steps:
            continue
        dual, mapl = loss_values(losses)
        history.append((i + 1, dual, mapl))
        if not (math.isfinite(dual) and math.isfinite(mapl)):
            if bar is not None and hasattr(bar, "close"):
                bar.close()
            raise FloatingPointError(
                f"ENOT training diverged at step {i + 1}: dual loss {dual}, map loss {mapl}; "
                f"lower lr, standardise the data, or check the samplers"
            )
        if bar is not None:
            bar.update(i + 1, dual, mapl, time.perf_counter() - start)
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    return history


class _PlainBar:
    """A printed line every tenth of the run, for machines without tqdm."""

    def __init__(self, steps: int):
        self.steps, self.next = steps, 0

    def update(self, done: int, dual: float, mapl: float, seconds: float) -> None:
        if done >= self.next or done == self.steps:
            print(f"ENOT step {done}/{self.steps}: dual loss {dual:.4g}, map loss {mapl:.4g}, {seconds:.0f} s",
                  file=sys.stderr, flush=True)
            self.next = done + max(1, self.steps // 10)


class _TqdmBar:
    def __init__(self, tqdm: Any, steps: int):
        self.bar, self.done = tqdm(total=steps, desc="ENOT", unit="step"), 0

    def update(self, done: int, dual: float, mapl: float, seconds: float) -> None:
        self.bar.update(done - self.done)
        self.bar.set_postfix(dual=f"{dual:.4g}", map=f"{mapl:.4g}", refresh=False)
        self.done = done

    def close(self) -> None:
        self.bar.close()


def _progress_bar(steps: int) -> Any:
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return _PlainBar(steps)
    return _TqdmBar(tqdm, steps)


class Trainer:
    """What the PyTorch and JAX trainers share: options, standardisation, the loop and the public methods.

    A framework's subclass sets ``rng`` (a ``numpy.random.Generator``), builds
    the networks and implements ``_array(x)`` (its array type and dtype),
    ``_update(x, y, lr, backward)`` (one Adam step of both networks on
    standardised batches, returning the loss pair), and ``_map_std``,
    ``_f_std``, ``_g_std`` (the map and the potentials in standardised
    coordinates).
    """

    rng: Any

    def __init__(
        self, dim: int, *, cost: PowerCost | None, tau: float, expectile_weight: float, lr: float, lr_schedule: str,
        lr_steps: int | None, batch_size: int, conjugate_steps: int, conjugate_lr: float, standardize: bool,
        bidirectional: bool, check_every: int,
    ):
        from ._validate import check_int, check_positive_float

        check_options(tau=tau, expectile_weight=expectile_weight, lr=lr, lr_schedule=lr_schedule,
                      batch_size=batch_size, conjugate_steps=conjugate_steps)
        self.dim = check_int("dim", dim, 1, 2**31)
        self.cost = cost if cost is not None else PowerCost(2.0)
        if standardize and not isinstance(self.cost, PowerCost):
            raise ValueError("standardize=True needs a softk.enot.PowerCost cost; pass standardize=False")
        self.tau, self.expectile_weight = float(tau), float(expectile_weight)
        self.lr, self.lr_schedule = float(lr), lr_schedule
        self.lr_steps = None if lr_steps is None else check_int("lr_steps", lr_steps, 1, 2**62)
        self.batch_size, self.conjugate_steps = int(batch_size), int(conjugate_steps)
        self.conjugate_lr = check_positive_float("conjugate_lr", conjugate_lr)
        self.standardize, self.bidirectional = bool(standardize), bool(bidirectional)
        self.check_every = check_int("check_every", check_every, 1, 2**31)
        self.z, self.step_count = Standardizer(), 0
        self.history: list[tuple[int, float, float]] = []

    def _array(self, x: Any) -> Any:
        raise NotImplementedError

    def _update(self, x: Any, y: Any, lr: float, backward: bool) -> Any:
        raise NotImplementedError

    def _map_std(self, x: Any) -> Any:
        raise NotImplementedError

    def _f_std(self, x: Any) -> Any:
        raise NotImplementedError

    def _g_std(self, y: Any) -> Any:
        raise NotImplementedError

    def _batch(self, name: str, sampler: Any, n: int) -> Any:
        return self._array(draw_batch(name, sampler, self.rng, n, self.dim))

    def _step(self, _: int) -> Any:
        x = self.z.x_in(self._batch("sampler_x", self.sampler_x, self.batch_size))
        y = self.z.y_in(self._batch("sampler_y", self.sampler_y, self.batch_size))
        backward = self.bidirectional and self.step_count % 2 == 1
        lr = self._lr_now()
        self.step_count += 1
        return self._update(y, x, lr, True) if backward else self._update(x, y, lr, False)

    def fit(self, sampler_x: Any, sampler_y: Any, steps: int, *, progress: bool | None = None) -> list:
        """Train for ``steps`` Adam steps on batches ``sampler(rng, batch_size)`` (or rows of sample arrays).

        ``rng`` is a ``numpy.random.Generator`` seeded by ``seed``. With
        ``bidirectional`` every other step maps the target batch back with ``g``.
        Returns (and appends to ``history``) ``[(step, dual loss, map loss), ...]``.
        """
        from ._validate import check_int

        steps = check_int("steps", steps, 0, 2**62)
        self.sampler_x, self.sampler_y = sampler_x, sampler_y
        if self.standardize and self.z.identity:
            n = max(self.batch_size, 4096)
            self.z = Standardizer(self._batch("sampler_x", sampler_x, n), self._batch("sampler_y", sampler_y, n),
                                  p=self.cost.p)
        done = self.step_count
        start, length = (0, self.lr_steps) if self.lr_steps else (done, max(steps, 1))
        self._lr_now = lambda: scheduled_lr(self.lr, self.lr_schedule, min(self.step_count - start, length), length)
        history = fit_loop(self._step, steps, progress=progress, check_every=self.check_every,
                           loss_values=lambda pair: (float(pair[0]), float(pair[1])))
        self.history += [(done + i, dual, mapl) for i, dual, mapl in history]
        return self.history[len(self.history) - len(history):]

    def transport(self, x: Any) -> Any:
        """``T(x)`` for rows ``x`` of shape ``(n, dim)``, in the data's coordinates."""
        return self.z.t_out(self._map_std(self.z.x_in(self._array(x))))

    def f(self, x: Any) -> Any:
        """The map's potential in the data's coordinates: ``T(x) = x - (grad h)^{-1}(grad f(x))``."""
        x = self._array(x)
        return self.z.f_out(self._f_std(self.z.x_in(x)), x)

    def g(self, y: Any) -> Any:
        """The target potential in the data's coordinates (``g^c(x) = c(x, T(x)) - g(T(x))``)."""
        y = self._array(y)
        return self.z.g_out(self._g_std(self.z.y_in(y)), y)

    def cost_estimate(self, x: Any, y: Any) -> tuple[float, float]:
        """``(E c(x, T(x)), E g(y) + E g^c(x))``: the primal and dual estimates of the OT cost."""
        x, y = self._array(x), self._array(y)
        t = self.transport(x)
        xp = compat.array_namespace(x)
        dual = _stop_gradient(dual_value(self.g(y), self.g(t), self.cost(x, t)))
        return float(xp.mean(self.cost(x, t))), float(dual)


def ENOT(dim: int, *, framework: str = "torch", **options: Any) -> Any:
    """An ENOT trainer for ``framework`` (``"torch"`` or ``"jax"``) on ``R^dim``.

    ``options`` go to the framework's trainer (``softk.backends.enot_torch.ENOT``
    or ``softk.backends.enot_jax.ENOT``, imported only now): ``cost`` (a
    :class:`PowerCost`, default ``p = 2``), ``tau``, ``expectile_weight``,
    ``lr``, ``lr_schedule`` (``"constant"`` or ``"cosine"``, decaying over each
    ``fit``, or over ``lr_steps`` steps counted across calls), ``betas``,
    ``hidden``, ``quadratic`` (add a learnt ``x^T S x / 2`` to each potential),
    ``standardize`` (train in the coordinates of :class:`Standardizer`, fitted
    on the first ``max(batch_size, 4096)`` samples), ``bidirectional`` (every
    other step ``g`` maps ``y`` back with the roles swapped, as in the paper's
    code), ``batch_size``, ``conjugate_steps``, ``conjugate_lr``, ``seed``,
    ``dtype``, ``check_every``, or user potentials ``f`` and ``g``. The trainer
    (a :class:`Trainer`) has ``fit(sampler_x, sampler_y, steps)``,
    ``transport(x)``, ``f(x)``, ``g(y)``, ``losses(x, y)``,
    ``cost_estimate(x, y)``, ``get_params()`` and ``set_params(params)``.

    Examples
    --------
    >>> import numpy as np
    >>> trainer = ENOT(2, framework="torch", hidden=(16, 16), batch_size=64, lr=1e-2, seed=0)
    >>> stretch = lambda rng, n: rng.normal(size=(n, 2)) * [2.0, 1.0] + 3.0
    >>> history = trainer.fit(lambda rng, n: rng.normal(size=(n, 2)), stretch, steps=100)
    >>> bool(np.abs(trainer.transport(np.ones((1, 2))).numpy() - [5.0, 4.0]).max() < 0.3)
    True
    """
    if framework not in ("torch", "jax"):
        raise ValueError(f"framework must be 'torch' or 'jax', got {framework!r}")
    return importlib.import_module(f"softk.backends.enot_{framework}").ENOT(dim, **options)
