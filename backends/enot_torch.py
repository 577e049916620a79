"""PyTorch glue for ENOT (:mod:`softk.enot`): the default potential network and the trainer.

The losses are :func:`softk.enot.dual_loss` and :func:`softk.enot.map_loss`,
differentiated by ``torch.autograd``; this module only builds the networks,
takes ``grad f`` with autograd and runs Adam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from softk import enot as core

__all__ = ["ENOT", "PotentialMLP", "stop_gradient"]


def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    return x.detach()


class PotentialMLP(torch.nn.Module):
    """``x -> MLP(x) (+ x^T Q x / 2)``: ELU hidden layers, a scalar output per row, optional quadratic term.

    Starts from :func:`softk.enot.init_mlp` (the same numbers as the JAX network for one seed).
    """

    def __init__(self, dim: int, hidden: Sequence[int], *, quadratic: bool, seed: int, dtype: torch.dtype):
        super().__init__()
        params = core.init_mlp(torch, dim, tuple(hidden), quadratic=quadratic, seed=seed, dtype=dtype)
        self.layers, self.quadratic = len(hidden) + 1, quadratic
        self.params = torch.nn.ParameterList(params)  # the init_mlp layout [W1, b1, ..., Wk, bk(, Q)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(self.layers):
            h = h @ self.params[2 * i] + self.params[2 * i + 1]
            if i + 1 < self.layers:
                h = torch.nn.functional.elu(h)
        out = h[..., 0]
        if self.quadratic:  # x^T S x / 2 with S = (Q + Q^T) / 2
            q = self.params[-1]
            out = out + 0.25 * ((x @ (q + q.T)) * x).sum(-1)
        return out


class ENOT(core.Trainer):
    """ENOT trainer on ``R^dim`` (see :func:`softk.enot.ENOT` for the options; the loop is
    :class:`softk.enot.Trainer`).

    The networks ``f_net`` and ``g_net`` (arguments ``f``, ``g``) default to
    :class:`PotentialMLP` (paper: 4 x 128 ELU); user modules map ``(n, dim)``
    to ``(n,)``. They act on standardised data (:class:`softk.enot.Standardizer`);
    ``transport``, ``f`` and ``g`` take and give the data's coordinates.
    ``conjugate="lbfgs"`` (or ``"gradient"``) solves ``min_y c(x, y) - g(y)``
    from ``T(x)`` before the dual update (:mod:`softk.enot_conjugate`, on
    gradients from autograd): with ``expectile_weight=0`` and
    ``amortization="regression"`` this is the amortised-conjugate (W2OT) baseline.
    """

    def __init__(
        self, dim: int, *, f: torch.nn.Module | None = None, g: torch.nn.Module | None = None,
        cost: core.PowerCost | None = None, tau: float = 0.99, expectile_weight: float = 1.0,
        expectile_scale: str = "cost", lr: float = 3e-4,
        lr_schedule: str = "constant", lr_steps: int | None = None, betas: tuple[float, float] = (0.9, 0.9),
        hidden: Sequence[int] = (128, 128, 128, 128), quadratic: bool = True, standardize: bool = True,
        bidirectional: bool = True, batch_size: int = 1024, conjugate: str | None = None, conjugate_steps: int = 20,
        conjugate_lr: float = 0.5, conjugate_gtol: float = 1e-5, amortization: str = "objective", seed: int = 0,
        dtype: Any = "float32", check_every: int = 10,
    ):
        super().__init__(dim, cost=cost, tau=tau, expectile_weight=expectile_weight, expectile_scale=expectile_scale,
                         lr=lr, lr_schedule=lr_schedule,
                         lr_steps=lr_steps, batch_size=batch_size, conjugate=conjugate,
                         conjugate_steps=conjugate_steps, conjugate_lr=conjugate_lr, conjugate_gtol=conjugate_gtol,
                         amortization=amortization, standardize=standardize, bidirectional=bidirectional,
                         check_every=check_every)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        mlp = dict(quadratic=quadratic, dtype=self.dtype)
        self.f_net = f if f is not None else PotentialMLP(self.dim, hidden, seed=seed, **mlp)
        self.g_net = g if g is not None else PotentialMLP(self.dim, hidden, seed=seed + 1, **mlp)
        self.opt_f = torch.optim.Adam(self.f_net.parameters(), lr=lr, betas=betas)
        self.opt_g = torch.optim.Adam(self.g_net.parameters(), lr=lr, betas=betas)
        self.rng = np.random.default_rng(seed)

    def _array(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(x).to(self.dtype)

    def _map(self, net: torch.nn.Module, x: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(net(x).sum(), x, create_graph=create_graph)
        return self.cost.twist(x if create_graph else x.detach(), grad)

    def _map_std(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(self.f_net, x, create_graph=False).detach()

    def _f_std(self, x: torch.Tensor) -> torch.Tensor:
        return self.f_net(x)

    def _g_std(self, y: torch.Tensor) -> torch.Tensor:
        return self.g_net(y)

    def _objective(self, net: torch.nn.Module, x: torch.Tensor) -> Any:
        """``y -> (c(x, y) - g(y), its gradient in y)`` row by row, without graph (``g``: ``net``)."""
        x = x.detach()

        def fun(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                value = self.cost(x, y) - net(y)
                (grad,) = torch.autograd.grad(value.sum(), y)
            return value.detach(), grad

        return fun

    def _losses(self, x: torch.Tensor, y: torch.Tensor, backward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dual loss, map loss)``; ``backward``: ``g`` maps the target batch ``x`` to ``y``, ``f`` is the dual."""
        net, dual_net = (self.g_net, self.f_net) if backward else (self.f_net, self.g_net)
        t = self._map(net, x, create_graph=True)
        t_hat, self.last_conjugate = self._solve(self._objective(dual_net, x), t)
        dual = self._dual_loss(dual_net(y), dual_net(t_hat), x, y, t_hat)
        if self.amortization == "regression":
            return dual, core.regression_loss(t, t_hat)
        return dual, core.map_loss(self.cost(x, t), dual_net(t))

    def losses(self, x: Any, y: Any) -> tuple[float, float]:
        """``(dual loss, map loss)`` of the forward direction at the current parameters on the batch ``(x, y)``."""
        dual, mapl = self._losses(self.z.x_in(self._array(x)), self.z.y_in(self._array(y)))
        return dual.item(), mapl.item()

    def _update(self, x: torch.Tensor, y: torch.Tensor, lr: float, backward: bool) -> tuple:
        for group in self.opt_f.param_groups + self.opt_g.param_groups:
            group["lr"] = lr
        dual, mapl = self._losses(x, y, backward)
        map_params, dual_params = list(self.f_net.parameters()), list(self.g_net.parameters())
        if backward:
            map_params, dual_params = dual_params, map_params
        grads_d = torch.autograd.grad(dual, dual_params, retain_graph=True)
        grads_m = torch.autograd.grad(mapl, map_params, materialize_grads=True)  # a potential's constant: no gradient
        for p, grad in zip(dual_params + map_params, grads_d + grads_m):
            p.grad = grad
        self.opt_g.step()
        self.opt_f.step()
        return dual.detach(), mapl.detach()

    def get_params(self) -> dict[str, list[np.ndarray]]:
        """The parameters of ``f`` and ``g`` as NumPy arrays (the :func:`softk.enot.init_mlp` layout)."""
        return {name: [p.detach().cpu().numpy().copy() for p in net.parameters()]
                for name, net in (("f", self.f_net), ("g", self.g_net))}

    def set_params(self, params: dict[str, list[np.ndarray]]) -> None:
        """Replace the parameters (same layout as :meth:`get_params`)."""
        with torch.no_grad():
            for name, net in (("f", self.f_net), ("g", self.g_net)):
                for p, v in zip(net.parameters(), params[name], strict=True):
                    p.copy_(torch.as_tensor(v))
