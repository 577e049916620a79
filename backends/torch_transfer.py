"""The OT transfer regulariser as a ``torch.nn.Module`` loss (see :mod:`softk.transfer`).

The module holds the settings and calls :func:`softk.transfer.ot_transfer_loss`;
autograd runs the core's closed-form VJP. Its ``forward`` is excluded from
``torch.compile`` (``torch.compiler.disable``): the solver's loop is
data-dependent, so it would break the graph anyway, and Dynamo would retrace
the solver's Python on every shape. The layers around the loss are compiled,
the loss runs eagerly (one graph break), and its values and gradients are
those of eager mode.
"""

from __future__ import annotations

import torch

from softk.transfer import ot_transfer_loss

__all__ = ["OTTransferLoss"]


class OTTransferLoss(torch.nn.Module):
    """``weight * OT_eps(student neurons, teacher neurons)`` for activations (B, p) and (B, q).

    Parameters are those of :func:`softk.transfer.ot_transfer_loss`; ``weight``
    is the regularisation strength ``lambda`` in ``L = L_task + lambda * OT``.
    Pass ``teacher.detach()`` when the teacher is frozen.

    Examples
    --------
    >>> import torch
    >>> from softk.backends.torch_transfer import OTTransferLoss
    >>> loss_fn = OTTransferLoss(epsilon=0.05, weight=0.5)
    >>> student = torch.randn(32, 8, requires_grad=True)
    >>> loss = loss_fn(student, torch.randn(32, 16))
    >>> loss.backward()
    >>> student.grad.shape
    torch.Size([32, 8])
    """

    def __init__(
        self,
        epsilon: float = 0.05,
        *,
        weight: float = 1.0,
        normalize: str = "standardize",
        debias: bool = False,
        tol: float = 1e-4,
        max_iter: int = 1000,
        scaling: bool = False,
    ) -> None:
        super().__init__()
        self.weight = float(weight)
        self.options = dict(epsilon=epsilon, normalize=normalize, debias=debias, tol=tol, max_iter=max_iter, scaling=scaling)

    @torch.compiler.disable
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.weight * ot_transfer_loss(student, teacher, **self.options)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, " + ", ".join(f"{k}={v!r}" for k, v in self.options.items())
