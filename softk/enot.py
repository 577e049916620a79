"""ENOT: expectile-regularised neural optimal transport (Buzun, Bobrin and Dylov, 2024).

A potential ``g`` on the target side and a map ``T`` learnt from samples; the
losses are in :mod:`softk.enot_losses`. ``T`` is the twist map of a potential
``f``: ``T(x) = x - (grad h)^{-1}(grad f(x))`` for a cost ``c(x, y) = h(x - y)``,
i.e. ``x - grad f(x)`` for ``h(z) = |z|^2 / 2``. The trainers
(``softk.backends.enot_torch``, ``softk.backends.enot_jax``) compute ``grad f``
with their autograd; :class:`Trainer` holds what they share (options,
standardisation, the loop of :mod:`softk.enot_loop`, the public methods). With
``conjugate="lbfgs"``, ``expectile_weight=0`` and ``amortization="regression"``
the same trainer is the amortised-conjugate (W2OT) baseline, whose inner solve
is :mod:`softk.enot_conjugate`.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import array_api_compat as compat

from .enot_conjugate import conjugate_gradient_steps, conjugate_lbfgs
from .enot_data import Standardizer, check_batch, draw_batch, init_mlp
from .enot_loop import fit_loop, scheduled_lr
from .enot_losses import (
    PowerCost,
    cost_scale,
    dual_loss,
    dual_value,
    expectile_loss,
    map_loss,
    regression_loss,
    stop_gradient,
)

__all__ = [
    "ENOT", "Trainer", "PowerCost", "Standardizer", "expectile_loss", "dual_value", "dual_loss", "cost_scale", "map_loss",
    "regression_loss", "check_options", "check_batch", "draw_batch", "scheduled_lr", "init_mlp", "fit_loop",
    "conjugate_gradient_steps", "conjugate_lbfgs", "PAPER_DEFAULTS",
]

#: The paper's defaults: expectile level, its weight, Adam, four ELU layers of 128.
PAPER_DEFAULTS = dict(tau=0.99, expectile_weight=1.0, lr=3e-4, betas=(0.9, 0.9), hidden=(128, 128, 128, 128))


def check_options(
    *, tau: Any, expectile_weight: Any, expectile_scale: Any, lr: Any, lr_schedule: Any, batch_size: Any,
    conjugate: Any, conjugate_steps: Any, amortization: Any,
) -> None:
    """``ValueError``/``TypeError`` naming the argument for a bad trainer option."""
    from ._validate import check_choice, check_int, check_positive_float

    check_choice("lr_schedule", lr_schedule, ("constant", "cosine"))
    if conjugate is not None:
        check_choice("conjugate", conjugate, ("gradient", "lbfgs"))
    check_choice("amortization", amortization, ("objective", "regression"))
    check_choice("expectile_scale", expectile_scale, ("cost", "none"))
    if amortization == "regression" and conjugate is None:
        raise ValueError("amortization='regression' regresses T(x) onto solved conjugate points: "
                         "it needs conjugate='lbfgs' or 'gradient'")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be a number in (0, 1), got {tau!r}")
    if isinstance(expectile_weight, bool) or not isinstance(expectile_weight, (int, float)) or not (
        0.0 <= expectile_weight < math.inf
    ):
        raise ValueError(f"expectile_weight must be a finite number >= 0, got {expectile_weight!r}")
    check_positive_float("lr", lr)
    check_int("batch_size", batch_size, 1, 2**31)
    check_int("conjugate_steps", conjugate_steps, 1, 10**6)


class Trainer:
    """What the PyTorch and JAX trainers share: options, standardisation, the loop and the public methods.

    A framework's subclass sets ``rng`` (a ``numpy.random.Generator``), builds
    the networks and implements ``_array(x)`` (its array type and dtype),
    ``_update(x, y, lr, backward)`` (one Adam step of both networks on
    standardised batches, returning the loss pair), and ``_map_std``,
    ``_f_std``, ``_g_std`` (the map and the potentials in standardised
    coordinates). ``_solve(fun, t)`` is the conjugate solve the options ask
    for, from the amortised guess ``t``, for the subclasses to call.
    """

    rng: Any

    def __init__(
        self, dim: int, *, cost: PowerCost | None, tau: float, expectile_weight: float, expectile_scale: str, lr: float,
        lr_schedule: str, lr_steps: int | None, batch_size: int, conjugate: str | None, conjugate_steps: int, conjugate_lr: float,
        conjugate_gtol: float, amortization: str, standardize: bool, bidirectional: bool, check_every: int,
    ):
        from ._validate import check_int, check_positive_float

        check_options(tau=tau, expectile_weight=expectile_weight, expectile_scale=expectile_scale, lr=lr,
                      lr_schedule=lr_schedule,
                      batch_size=batch_size, conjugate=conjugate, conjugate_steps=conjugate_steps,
                      amortization=amortization)
        self.dim = check_int("dim", dim, 1, 2**31)
        self.cost = cost if cost is not None else PowerCost(2.0)
        if standardize and not isinstance(self.cost, PowerCost):
            raise ValueError("standardize=True needs a softk.enot.PowerCost cost; pass standardize=False")
        self.tau, self.expectile_weight, self.expectile_scale = float(tau), float(expectile_weight), expectile_scale
        self.lr, self.lr_schedule = float(lr), lr_schedule
        self.lr_steps = None if lr_steps is None else check_int("lr_steps", lr_steps, 1, 2**62)
        self.batch_size, self.amortization = int(batch_size), amortization
        self.conjugate, self.conjugate_steps = conjugate, int(conjugate_steps)
        self.conjugate_lr = check_positive_float("conjugate_lr", conjugate_lr)
        self.conjugate_gtol = check_positive_float("conjugate_gtol", conjugate_gtol)
        self.standardize, self.bidirectional = bool(standardize), bool(bidirectional)
        self.check_every = check_int("check_every", check_every, 1, 2**31)
        self.z, self.step_count = Standardizer(), 0
        self.history: list[tuple[int, float, float]] = []
        #: ``(iterations, evaluations)`` of the last L-BFGS conjugate solve (``conjugate="lbfgs"``), else ``None``.
        self.last_conjugate: tuple[Any, Any] | None = None

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

    def _solve(self, fun: Any, t: Any) -> tuple[Any, Any]:
        """``(y^, (iterations, evaluations) or None)``: the conjugate points from the guess ``t`` (no gradient)."""
        t = stop_gradient(t)
        if self.conjugate == "lbfgs":
            sol = conjugate_lbfgs(fun, t, max_iter=self.conjugate_steps, gtol=self.conjugate_gtol)
            return stop_gradient(sol.y), (sol.iterations, sol.evaluations)
        if self.conjugate == "gradient":
            return stop_gradient(conjugate_gradient_steps(fun, t, steps=self.conjugate_steps, lr=self.conjugate_lr)), None
        return t, None

    def _dual_loss(self, g_y: Any, g_t: Any, x: Any, y: Any, t_hat: Any) -> Any:
        """:func:`dual_loss` on the batch, the expectile weight relative to :func:`cost_scale` unless told not to."""
        scale = cost_scale(self.cost, x, y) if self.expectile_scale == "cost" else 1.0
        return dual_loss(g_y, g_t, self.cost(x, t_hat), self.cost(x, y), tau=self.tau,
                         expectile_weight=self.expectile_weight, scale=scale)

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
        dual = stop_gradient(dual_value(self.g(y), self.g(t), self.cost(x, t)))
        return float(xp.mean(self.cost(x, t))), float(dual)


def ENOT(dim: int, *, framework: str = "torch", **options: Any) -> Any:
    """An ENOT trainer for ``framework`` (``"torch"`` or ``"jax"``) on ``R^dim``.

    ``options`` go to the framework's trainer (``softk.backends.enot_torch.ENOT``
    or ``softk.backends.enot_jax.ENOT``, imported only now): ``cost`` (a
    :class:`PowerCost`, default ``p = 2``), ``tau``, ``expectile_weight``,
    ``expectile_scale`` (``"cost"``: the weight is relative to the batch's
    :func:`cost_scale`; ``"none"``: the paper's absolute weight),
    ``lr``, ``lr_schedule`` (``"constant"`` or ``"cosine"``, decaying over each
    ``fit``, or over ``lr_steps`` steps counted across calls), ``betas``,
    ``hidden``, ``quadratic`` (add a learnt ``x^T S x / 2`` to each potential),
    ``standardize`` (train in the coordinates of :class:`Standardizer`, fitted
    on the first ``max(batch_size, 4096)`` samples), ``bidirectional`` (every
    other step ``g`` maps ``y`` back with the roles swapped, as in the paper's
    code), ``batch_size``, ``conjugate`` (``None``: ENOT's
    ``T^ = T(x)``; ``"lbfgs"``: solve the conjugate problem from ``T(x)`` by
    :func:`conjugate_lbfgs` to gradient norm ``conjugate_gtol`` within
    ``conjugate_steps`` iterations; ``"gradient"``: ``conjugate_steps``
    gradient steps of size ``conjugate_lr``), ``amortization``
    (``"objective"``: the map minimises ``E[c(x, T(x)) - g(T(x))]``;
    ``"regression"``: it regresses onto the solved points), ``seed``,
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
