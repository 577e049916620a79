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


class ENOT(core.Trainer):
    """ENOT trainer on ``R^dim`` (see :func:`softk.enot.ENOT` for the options; the loop is
    :class:`softk.enot.Trainer`).

    ``f`` and ``g`` default to the ELU MLP :func:`mlp_apply` (paper: 4 x 128);
    user potentials are pairs ``(apply, params)`` with ``apply(params, x)``
    mapping rows ``(n, dim)`` to ``(n,)``. They act on standardised data
    (:class:`softk.enot.Standardizer`); ``transport``, ``f`` and ``g`` take and
    give the data's coordinates. ``conjugate="lbfgs"`` (or ``"gradient"``)
    solves ``min_y c(x, y) - g(y)`` from ``T(x)`` inside the jitted step
    (:mod:`softk.enot_conjugate`, a ``lax.while_loop``): with
    ``expectile_weight=0`` and ``amortization="regression"`` this is the
    amortised-conjugate (W2OT) baseline. One jitted step computes both losses,
    both gradients and optax's Adam update.
    """

    def __init__(
        self, dim: int, *, f: tuple[Callable, Any] | None = None, g: tuple[Callable, Any] | None = None,
        cost: core.PowerCost | None = None, tau: float = 0.99, expectile_weight: float = 1.0,
        expectile_scale: str = "cost", lr: float = 3e-4,
        lr_schedule: str = "constant", lr_steps: int | None = None, betas: tuple[float, float] = (0.9, 0.9),
        hidden: Sequence[int] = (128, 128, 128, 128), quadratic: bool = True, standardize: bool = True,
        bidirectional: bool = True, batch_size: int = 1024, conjugate: str | None = None, conjugate_steps: int = 20,
        conjugate_lr: float = 0.5, conjugate_gtol: float = 1e-5, amortization: str = "objective", seed: int = 0,
        dtype: Any = "float32", check_every: int = 50,
    ):
        super().__init__(dim, cost=cost, tau=tau, expectile_weight=expectile_weight, expectile_scale=expectile_scale,
                         lr=lr, lr_schedule=lr_schedule,
                         lr_steps=lr_steps, batch_size=batch_size, conjugate=conjugate,
                         conjugate_steps=conjugate_steps, conjugate_lr=conjugate_lr, conjugate_gtol=conjugate_gtol,
                         amortization=amortization, standardize=standardize, bidirectional=bidirectional,
                         check_every=check_every)
        self.dtype = jnp.dtype(dtype)

        def default(offset: int) -> tuple[Callable, Any]:
            params = core.init_mlp(jnp, self.dim, tuple(hidden), quadratic=quadratic, seed=seed + offset,
                                   dtype=self.dtype)
            return mlp_apply, params

        self.f_apply, f_params = f if f is not None else default(0)
        self.g_apply, g_params = g if g is not None else default(1)
        self.params = {"f": f_params, "g": g_params}
        self.optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=betas[0], b2=betas[1])
        self.opt_state = self.optimizer.init(self.params)
        self.rng = np.random.default_rng(seed)
        self._train_step = jax.jit(self._train_step_impl, static_argnums=5)
        self._loss_pair = jax.jit(self._loss_pair_impl)
        self._transport = jax.jit(lambda params, x: self._map(self.f_apply, params, x))

    def _array(self, x: Any) -> Any:
        return jnp.asarray(x, self.dtype)

    def _map_std(self, x: Any) -> Any:
        return self._transport(self.params["f"], x)

    def _f_std(self, x: Any) -> Any:
        return self.f_apply(self.params["f"], x)

    def _g_std(self, y: Any) -> Any:
        return self.g_apply(self.params["g"], y)

    def _roles(self, params: Any, backward: bool) -> tuple:
        """``(map apply, map params, dual apply, dual params)``: ``f`` maps ``x`` forwards, ``g`` maps ``y`` back."""
        if backward:
            return self.g_apply, params["g"], self.f_apply, params["f"]
        return self.f_apply, params["f"], self.g_apply, params["g"]

    def _map(self, apply: Callable, params: Any, x: Any) -> Any:
        grad = jax.grad(lambda z: jnp.sum(apply(params, z)))(x)  # rows are independent
        return self.cost.twist(x, grad)

    def _objective(self, apply: Callable, params: Any, x: Any) -> Callable:
        """``y -> (c(x, y) - g(y), its gradient in y)`` row by row (``g``: ``apply(params, .)``)."""
        grad = jax.grad(lambda y: (lambda v: (jnp.sum(v), v))(self.cost(x, y) - apply(params, y)), has_aux=True)

        def fun(y: Any) -> tuple[Any, Any]:
            g, value = grad(y)
            return value, g

        return fun

    def _t_hat(self, dual_apply: Callable, dual_params: Any, x: Any, t: Any) -> tuple:
        return self._solve(self._objective(dual_apply, dual_params, x), t)

    def _dual(self, params: Any, apply: Callable, x: Any, y: Any, t_hat: Any) -> Any:
        return self._dual_loss(apply(params, y), apply(params, t_hat), x, y, t_hat)

    def _map_loss(self, params: Any, apply: Callable, dual_apply: Callable, dual_params: Any, x: Any) -> tuple:
        t = self._map(apply, params, x)
        return core.map_loss(self.cost(x, t), dual_apply(dual_params, t)), t

    def _map_and_solve(self, m_apply: Callable, m_params: Any, d_apply: Callable, d_params: Any, x: Any) -> tuple:
        """``(map loss, its gradient, T^, solver info)`` for either amortisation."""
        if self.amortization == "regression":
            t_hat, info = self._t_hat(d_apply, d_params, x, self._map(m_apply, m_params, x))
            mapl, grad_m = jax.value_and_grad(lambda p: core.regression_loss(self._map(m_apply, p, x), t_hat))(m_params)
            return mapl, grad_m, t_hat, info
        (mapl, t), grad_m = jax.value_and_grad(self._map_loss, has_aux=True)(m_params, m_apply, d_apply, d_params, x)
        return (mapl, grad_m, *self._t_hat(d_apply, d_params, x, t))

    def _loss_pair_impl(self, params: Any, x: Any, y: Any) -> tuple[Any, Any]:
        m_apply, m_params, d_apply, d_params = self._roles(params, False)
        mapl, _, t_hat, _ = self._map_and_solve(m_apply, m_params, d_apply, d_params, x)
        return self._dual(d_params, d_apply, x, y, t_hat), mapl

    def _train_step_impl(self, params: Any, opt_state: Any, x: Any, y: Any, lr: Any, backward: bool) -> tuple:
        m_apply, m_params, d_apply, d_params = self._roles(params, backward)
        mapl, grad_m, t_hat, info = self._map_and_solve(m_apply, m_params, d_apply, d_params, x)
        dual, grad_d = jax.value_and_grad(self._dual)(d_params, d_apply, x, y, t_hat)
        grads = {"g": grad_m, "f": grad_d} if backward else {"f": grad_m, "g": grad_d}
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, (dual, mapl), info

    def _update(self, x: Any, y: Any, lr: float, backward: bool) -> tuple:
        self.params, self.opt_state, losses, self.last_conjugate = self._train_step(
            self.params, self.opt_state, x, y, jnp.asarray(lr, self.dtype), backward)
        return losses

    def losses(self, x: Any, y: Any) -> tuple[float, float]:
        """``(dual loss, map loss)`` of the forward direction at the current parameters on the batch ``(x, y)``."""
        dual, mapl = self._loss_pair(self.params, self.z.x_in(self._array(x)), self.z.y_in(self._array(y)))
        return float(dual), float(mapl)

    def get_params(self) -> dict[str, list[np.ndarray]]:
        """The parameters of ``f`` and ``g`` as NumPy arrays (the :func:`softk.enot.init_mlp` layout)."""
        return {name: [np.asarray(p) for p in jax.tree_util.tree_leaves(self.params[name])] for name in ("f", "g")}

    def set_params(self, params: dict[str, list[np.ndarray]]) -> None:
        """Replace the parameters (same layout as :meth:`get_params`) and reset Adam's state."""
        self.params = {name: jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(self.params[name]), [jnp.asarray(v, self.dtype) for v in params[name]])
            for name in ("f", "g")}
        self.opt_state = self.optimizer.init(self.params)
