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
from softk._validate import check_int

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


class ENOT:
    """ENOT trainer on ``R^dim`` (see :func:`softk.enot.ENOT` for the options).

    The networks ``f_net`` and ``g_net`` (arguments ``f``, ``g``) default to
    :class:`PotentialMLP` (paper: 4 x 128 ELU); user modules map ``(n, dim)``
    to ``(n,)``. They act on standardised data (:class:`softk.enot.Standardizer`);
    ``transport``, ``f`` and ``g`` take and give the data's coordinates.
    ``conjugate_steps > 0`` refines ``T^`` by that many gradient steps on
    ``c(x, y) - g(y)`` (step ``conjugate_lr``): with ``expectile_weight=0``
    this is the W2OT-style baseline.
    """

    def __init__(
        self, dim: int, *, f: torch.nn.Module | None = None, g: torch.nn.Module | None = None,
        cost: core.PowerCost | None = None, tau: float = 0.99, expectile_weight: float = 1.0,
        lr: float = 3e-4, lr_schedule: str = "constant", lr_steps: int | None = None, betas: tuple[float, float] = (0.9, 0.9), hidden: Sequence[int] = (128, 128, 128, 128),
        quadratic: bool = True, standardize: bool = True, bidirectional: bool = True, batch_size: int = 1024, conjugate_steps: int = 0, conjugate_lr: float = 0.5,
        seed: int = 0, dtype: Any = "float32", check_every: int = 10,
    ):
        core.check_options(tau=tau, expectile_weight=expectile_weight, lr=lr, lr_schedule=lr_schedule, batch_size=batch_size,
                           conjugate_steps=conjugate_steps)
        self.dim, self.tau, self.expectile_weight = int(dim), float(tau), float(expectile_weight)
        self.cost = cost if cost is not None else core.PowerCost(2.0)
        if standardize and not isinstance(self.cost, core.PowerCost):
            raise ValueError("standardize=True needs a softk.enot.PowerCost cost; pass standardize=False")
        self.standardize, self.z = bool(standardize), core.Standardizer()
        self.lr_steps = None if lr_steps is None else check_int("lr_steps", lr_steps, 1, 2**62)
        self.step_count, self.bidirectional = 0, bool(bidirectional)
        self.batch_size, self.conjugate_steps, self.conjugate_lr = int(batch_size), int(conjugate_steps), conjugate_lr
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.seed, self.check_every, self.lr, self.lr_schedule = seed, check_every, float(lr), lr_schedule
        self.f_net = f if f is not None else PotentialMLP(dim, hidden, quadratic=quadratic, seed=seed, dtype=self.dtype)
        self.g_net = g if g is not None else PotentialMLP(dim, hidden, quadratic=quadratic, seed=seed + 1, dtype=self.dtype)
        self.opt_f = torch.optim.Adam(self.f_net.parameters(), lr=lr, betas=betas)
        self.opt_g = torch.optim.Adam(self.g_net.parameters(), lr=lr, betas=betas)
        self.rng = np.random.default_rng(seed)
        self.history: list[tuple[int, float, float]] = []

    def _as_tensor(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(x).to(self.dtype)

    def _map(self, net: torch.nn.Module, x: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(net(x).sum(), x, create_graph=create_graph)
        return self.cost.twist(x if create_graph else x.detach(), grad)

    def _refine(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``conjugate_steps`` gradient steps on ``y -> c(x, y) - g(y)`` (``g``: ``net``) from ``t``."""
        for _ in range(self.conjugate_steps):
            t = t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad((self.cost(x, t) - net(t)).sum(), t)
            t = t - self.conjugate_lr * grad
        return t.detach()

    def _losses(self, x: torch.Tensor, y: torch.Tensor, backward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dual loss, map loss)``; ``backward``: ``g`` maps the target batch ``x`` to ``y``, ``f`` is the dual."""
        net, dual_net = (self.g_net, self.f_net) if backward else (self.f_net, self.g_net)
        t = self._map(net, x, create_graph=True)
        t_hat = self._refine(dual_net, x, t) if self.conjugate_steps else stop_gradient(t)
        dual = core.dual_loss(dual_net(y), dual_net(t_hat), self.cost(x, t_hat), self.cost(x, y),
                              tau=self.tau, expectile_weight=self.expectile_weight)
        return dual, core.map_loss(self.cost(x, t), dual_net(t))

    def losses(self, x: Any, y: Any) -> tuple[float, float]:
        """``(dual loss, map loss)`` of the forward direction at the current parameters on the batch ``(x, y)``."""
        dual, mapl = self._losses(self.z.x_in(self._as_tensor(x)), self.z.y_in(self._as_tensor(y)))
        return dual.item(), mapl.item()

    def _step(self, _: int) -> tuple[torch.Tensor, torch.Tensor]:
        for group in self.opt_f.param_groups + self.opt_g.param_groups:
            group["lr"] = self._lr_now()
        backward = self.bidirectional and self.step_count % 2 == 1
        self.step_count += 1
        x = self.z.x_in(self._as_tensor(core.draw_batch("sampler_x", self.sampler_x, self.rng, self.batch_size, self.dim)))
        y = self.z.y_in(self._as_tensor(core.draw_batch("sampler_y", self.sampler_y, self.rng, self.batch_size, self.dim)))
        dual, mapl = self._losses(y, x, True) if backward else self._losses(x, y)
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

    def fit(self, sampler_x: Any, sampler_y: Any, steps: int, *, progress: bool | None = None) -> list:
        """Train for ``steps`` Adam steps on batches ``sampler(rng, batch_size)`` (or rows of sample arrays).

        ``rng`` is a ``numpy.random.Generator`` seeded by ``seed``. Returns (and
        appends to ``self.history``) ``[(step, dual loss, map loss), ...]``.
        """
        steps = check_int("steps", steps, 0, 2**62)
        self.sampler_x, self.sampler_y = sampler_x, sampler_y
        if self.standardize and self.z.identity:
            n = max(self.batch_size, 4096)
            self.z = core.Standardizer(self._as_tensor(core.draw_batch("sampler_x", sampler_x, self.rng, n, self.dim)),
                                       self._as_tensor(core.draw_batch("sampler_y", sampler_y, self.rng, n, self.dim)),
                                       p=self.cost.p)
        done = self.step_count
        start, length = (0, self.lr_steps) if self.lr_steps else (done, max(steps, 1))
        self._lr_now = lambda: core.scheduled_lr(self.lr, self.lr_schedule, min(self.step_count - start, length), length)
        history = core.fit_loop(self._step, steps, progress=progress, check_every=self.check_every,
                                loss_values=lambda pair: (float(pair[0]), float(pair[1])))
        self.history += [(done + i, dual, mapl) for i, dual, mapl in history]
        return self.history[-len(history):] if history else []

    def transport(self, x: Any) -> torch.Tensor:
        """``T(x)``, detached, for ``x`` of shape ``(n, dim)``."""
        return self.z.t_out(self._map(self.f_net, self.z.x_in(self._as_tensor(x)), create_graph=False).detach())

    def f(self, x: Any) -> torch.Tensor:
        """The map's potential in the data's coordinates: ``T(x) = x - (grad h)^{-1}(grad f(x))``."""
        x = self._as_tensor(x)
        return self.z.f_out(self.f_net(self.z.x_in(x)), x)

    def g(self, y: Any) -> torch.Tensor:
        """The target potential in the data's coordinates (``g^c(x) = c(x, T(x)) - g(T(x))``)."""
        y = self._as_tensor(y)
        return self.z.g_out(self.g_net(self.z.y_in(y)), y)

    def cost_estimate(self, x: Any, y: Any) -> tuple[float, float]:
        """``(E c(x, T(x)), E g(y) + E g^c(x))``: the primal and dual estimates of the OT cost."""
        x, y = self._as_tensor(x), self._as_tensor(y)
        t = self.transport(x)
        with torch.no_grad():
            return float(self.cost(x, t).mean()), float(core.dual_value(self.g(y), self.g(t), self.cost(x, t)))

    def get_params(self) -> dict[str, list[np.ndarray]]:
        """The parameters of ``f`` and ``g`` as NumPy arrays (the :func:`softk.enot.init_mlp` layout)."""
        return {name: [p.detach().cpu().numpy().copy() for p in net.parameters()]
                for name, net in (("f", self.f_net), ("g", self.g_net))}

    def set_params(self, params: dict[str, list[np.ndarray]]) -> None:
        with torch.no_grad():
            for name, net in (("f", self.f_net), ("g", self.g_net)):
                for p, v in zip(net.parameters(), params[name], strict=True):
                    p.copy_(torch.as_tensor(v))
