"""JAX glue for ENOT (:mod:`softk.enot`): the default potential network and a jitted optax trainer.

The losses are :func:`softk.enot.dual_loss` and :func:`softk.enot.map_loss`,
differentiated by ``jax.grad``; this module only builds the networks, takes
``grad f`` with ``jax.grad`` and runs ``optax.adam`` in one jitted step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from softk import enot as core
from softk._validate import check_int

__all__ = ["ENOT", "mlp_apply", "stop_gradient"]


def stop_gradient(x: Any) -> Any:
    return jax.lax.stop_gradient(x)


def mlp_apply(params: list, x: Any) -> Any:
    """The default potential on rows ``x`` (n, dim) -> (n,): ELU MLP (+ ``x^T S x / 2``, ``S = (Q + Q^T) / 2``).

    ``params`` has the :func:`softk.enot.init_mlp` layout; an odd length means a quadratic term.
    """
    layers = len(params) // 2
    h = x
    for i in range(layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i + 1 < layers:
            h = jax.nn.elu(h)
    out = h[..., 0]
    if len(params) % 2:
        q = params[-1]
        out = out + 0.25 * jnp.sum((x @ (q + q.T)) * x, axis=-1)
    return out


class ENOT:
    """ENOT trainer on ``R^dim`` (see :func:`softk.enot.ENOT` for the options).

    ``f`` and ``g`` default to the ELU MLP :func:`mlp_apply` (paper: 4 x 128);
    user potentials are pairs ``(apply, params)`` with ``apply(params, x)``
    mapping rows ``(n, dim)`` to ``(n,)``. They act on standardised data
    (:class:`softk.enot.Standardizer`); ``transport``, ``f`` and ``g`` take and
    give the data's coordinates.
    ``conjugate_steps > 0`` refines ``T^`` by gradient steps on ``c(x, y) - g(y)``
    (the W2OT-style baseline with ``expectile_weight=0``).
    """

    def __init__(
        self, dim: int, *, f: tuple[Callable, Any] | None = None, g: tuple[Callable, Any] | None = None,
        cost: core.PowerCost | None = None, tau: float = 0.99, expectile_weight: float = 1.0,
        lr: float = 3e-4, lr_schedule: str = "constant", lr_steps: int | None = None, betas: tuple[float, float] = (0.9, 0.9), hidden: Sequence[int] = (128, 128, 128, 128),
        quadratic: bool = True, standardize: bool = True, bidirectional: bool = True, batch_size: int = 1024, conjugate_steps: int = 0, conjugate_lr: float = 0.5,
        seed: int = 0, dtype: Any = "float32", check_every: int = 50,
    ):
        core.check_options(tau=tau, expectile_weight=expectile_weight, lr=lr, lr_schedule=lr_schedule, batch_size=batch_size,
                           conjugate_steps=conjugate_steps)
        self.dim, self.batch_size, self.check_every = int(dim), int(batch_size), check_every
        self.dtype = jnp.dtype(dtype)
        self.tau, self.expectile_weight = float(tau), float(expectile_weight)
        self.cost = cost if cost is not None else core.PowerCost(2.0)
        if standardize and not isinstance(self.cost, core.PowerCost):
            raise ValueError("standardize=True needs a softk.enot.PowerCost cost; pass standardize=False")
        self.standardize, self.z = bool(standardize), core.Standardizer()
        self.lr_steps = None if lr_steps is None else check_int("lr_steps", lr_steps, 1, 2**62)
        self.step_count, self.bidirectional = 0, bool(bidirectional)

        def default(offset):
            return mlp_apply, core.init_mlp(jnp, dim, tuple(hidden), quadratic=quadratic, seed=seed + offset,
                                            dtype=self.dtype)

        self.f_apply, f_params = f if f is not None else default(0)
        self.g_apply, g_params = g if g is not None else default(1)
        self.params = {"f": f_params, "g": g_params}
        self.lr, self.lr_schedule = float(lr), lr_schedule
        self.optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=betas[0], b2=betas[1])
        self.opt_state = self.optimizer.init(self.params)
        self.rng = np.random.default_rng(seed)
        self.history: list[tuple[int, float, float]] = []
        self.conjugate_steps, self.conjugate_lr = int(conjugate_steps), conjugate_lr
        self._train_step = jax.jit(self._train_step_impl, static_argnums=5)
        self._loss_pair = jax.jit(self._loss_pair_impl)
        self._transport = jax.jit(lambda params, x: self._map(self.f_apply, params, x))

    def f(self, x: Any) -> Any:
        """The map's potential in the data's coordinates: ``T(x) = x - (grad h)^{-1}(grad f(x))``."""
        x = jnp.asarray(x, self.dtype)
        return self.z.f_out(self.f_apply(self.params["f"], self.z.x_in(x)), x)

    def g(self, y: Any) -> Any:
        """The target potential in the data's coordinates (``g^c(x) = c(x, T(x)) - g(T(x))``)."""
        y = jnp.asarray(y, self.dtype)
        return self.z.g_out(self.g_apply(self.params["g"], self.z.y_in(y)), y)

    def _roles(self, params: Any, backward: bool) -> tuple:
        """``(map apply, map params, dual apply, dual params)``: ``f`` maps ``x`` forwards, ``g`` maps ``y`` back."""
        if backward:
            return self.g_apply, params["g"], self.f_apply, params["f"]
        return self.f_apply, params["f"], self.g_apply, params["g"]

    def _map(self, apply: Callable, params: Any, x: Any) -> Any:
        grad = jax.grad(lambda z: jnp.sum(apply(params, z)))(x)  # rows are independent
        return self.cost.twist(x, grad)

    def _refine(self, apply: Callable, params: Any, x: Any, t: Any) -> Any:
        objective = jax.grad(lambda y: jnp.sum(self.cost(x, y) - apply(params, y)))

        def body(_, y):
            return y - self.conjugate_lr * objective(y)

        return stop_gradient(jax.lax.fori_loop(0, self.conjugate_steps, body, t))

    def _dual(self, params: Any, apply: Callable, x: Any, y: Any, t_hat: Any) -> Any:
        return core.dual_loss(apply(params, y), apply(params, t_hat), self.cost(x, t_hat), self.cost(x, y),
                              tau=self.tau, expectile_weight=self.expectile_weight)

    def _map_loss(self, params: Any, apply: Callable, dual_apply: Callable, dual_params: Any, x: Any) -> tuple:
        t = self._map(apply, params, x)
        return core.map_loss(self.cost(x, t), dual_apply(dual_params, t)), t

    def _t_hat(self, dual_apply: Callable, dual_params: Any, x: Any, t: Any) -> Any:
        return self._refine(dual_apply, dual_params, x, t) if self.conjugate_steps else stop_gradient(t)

    def _loss_pair_impl(self, params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        m_apply, m_params, d_apply, d_params = self._roles(params, False)
        mapl, t = self._map_loss(m_params, m_apply, d_apply, d_params, x)
        return self._dual(d_params, d_apply, x, y, self._t_hat(d_apply, d_params, x, t)), mapl

    def _train_step_impl(self, params: Any, opt_state: Any, x: Any, y: Any, lr: Any, backward: bool) -> tuple:
        m_apply, m_params, d_apply, d_params = self._roles(params, backward)
        (mapl, t), grad_m = jax.value_and_grad(self._map_loss, has_aux=True)(m_params, m_apply, d_apply, d_params, x)
        t_hat = self._t_hat(d_apply, d_params, x, t)
        dual, grad_d = jax.value_and_grad(self._dual)(d_params, d_apply, x, y, t_hat)
        grads = {"g": grad_m, "f": grad_d} if backward else {"f": grad_m, "g": grad_d}
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, (dual, mapl)

    def losses(self, x: Any, y: Any) -> tuple[float, float]:
        """``(dual loss, map loss)`` of the forward direction at the current parameters on the batch ``(x, y)``."""
        x, y = self.z.x_in(jnp.asarray(x, self.dtype)), self.z.y_in(jnp.asarray(y, self.dtype))
        dual, mapl = self._loss_pair(self.params, x, y)
        return float(dual), float(mapl)

    def _step(self, _: int) -> tuple[Any, Any]:
        x = self.z.x_in(jnp.asarray(core.draw_batch("sampler_x", self.sampler_x, self.rng, self.batch_size, self.dim),
                                    self.dtype))
        y = self.z.y_in(jnp.asarray(core.draw_batch("sampler_y", self.sampler_y, self.rng, self.batch_size, self.dim),
                                    self.dtype))
        backward = self.bidirectional and self.step_count % 2 == 1
        self.params, self.opt_state, losses = self._train_step(
            self.params, self.opt_state, *((y, x) if backward else (x, y)), jnp.asarray(self._lr_now(), self.dtype),
            backward)
        self.step_count += 1
        return losses

    def fit(self, sampler_x: Any, sampler_y: Any, steps: int, *, progress: bool | None = None) -> list:
        """Train for ``steps`` Adam steps on batches ``sampler(rng, batch_size)`` (or rows of sample arrays).

        ``rng`` is a ``numpy.random.Generator`` seeded by ``seed``. Returns (and
        appends to ``self.history``) ``[(step, dual loss, map loss), ...]``.
        """
        steps = check_int("steps", steps, 0, 2**62)
        self.sampler_x, self.sampler_y = sampler_x, sampler_y
        if self.standardize and self.z.identity:
            n = max(self.batch_size, 4096)
            self.z = core.Standardizer(jnp.asarray(core.draw_batch("sampler_x", sampler_x, self.rng, n, self.dim), self.dtype),
                                       jnp.asarray(core.draw_batch("sampler_y", sampler_y, self.rng, n, self.dim), self.dtype),
                                       p=self.cost.p)
        done = self.step_count
        start, length = (0, self.lr_steps) if self.lr_steps else (done, max(steps, 1))
        self._lr_now = lambda: core.scheduled_lr(self.lr, self.lr_schedule, min(self.step_count - start, length), length)
        history = core.fit_loop(self._step, steps, progress=progress, check_every=self.check_every,
                                loss_values=lambda pair: (float(pair[0]), float(pair[1])))
        self.history += [(done + i, dual, mapl) for i, dual, mapl in history]
        return self.history[-len(history):] if history else []

    def transport(self, x: Any) -> Any:
        """``T(x)`` for ``x`` of shape ``(n, dim)``."""
        return self.z.t_out(self._transport(self.params["f"], self.z.x_in(jnp.asarray(x, self.dtype))))

    def cost_estimate(self, x: Any, y: Any) -> tuple[float, float]:
        """``(E c(x, T(x)), E g(y) + E g^c(x))``: the primal and dual estimates of the OT cost."""
        x, y = jnp.asarray(x, self.dtype), jnp.asarray(y, self.dtype)
        t = self.transport(x)
        return float(jnp.mean(self.cost(x, t))), float(core.dual_value(self.g(y), self.g(t), self.cost(x, t)))

    def get_params(self) -> dict[str, list[np.ndarray]]:
        """The parameters of ``f`` and ``g`` as NumPy arrays (the :func:`softk.enot.init_mlp` layout)."""
        return {name: [np.asarray(p) for p in jax.tree_util.tree_leaves(self.params[name])] for name in ("f", "g")}

    def set_params(self, params: dict[str, list[np.ndarray]]) -> None:
        """Replace the parameters (same layout as :meth:`get_params`) and reset Adam's state."""
        self.params = {name: jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(self.params[name]), [jnp.asarray(v, self.dtype) for v in params[name]])
            for name in ("f", "g")}
        self.opt_state = self.optimizer.init(self.params)
