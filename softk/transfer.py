"""OT representation transfer (Li, Grandvalet, Flamary, Courty and Dou, 2020).

A layer's activations on a batch, ``S`` of shape (B, p), are a set of ``p``
*neurons*: neuron ``i`` is the column ``S[:, i]``, a point in ``R^B``. The
regulariser is the entropic OT cost between the student's and the teacher's
neuron sets, uniform weights ``a = 1/p``, ``b = 1/q``::

    W = OT_eps(s, t),   C_ij = ||s_i - t_j||^2,   s_i = N(S[:, i]), t_j = N(T[:, j]),

where ``N`` normalises each neuron (``normalize``). ``W`` does not change when
the neurons of either layer are permuted, and ``p`` and ``q`` may differ. With
``debias=True`` it is the Sinkhorn divergence ``W(s, t) - (W(s, s) + W(t, t)) / 2``.

The solve is the engine's kernel strategy on the ``p x q`` cost (one matrix
product); its plan ``P`` gives the gradient by the envelope theorem, never by
unrolling: ``dW/ds_i = 2 (a s_i - (P t)_i)``, ``dW/dt_j = 2 (b t_j - (P^T s)_j)``
(for ``W(s, s)`` both arguments move: ``2 (2 a s_i - ((P + P^T) s)_i)``),
then the VJP of ``N``.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from ._op import CoreOp, differentiable
from ._ot.solved import solved_plan
from ._validate import check_choice, check_finite_values, check_int, check_positive_float, namespace_of

__all__ = ["ot_transfer_loss"]

NORMALIZE = ("standardize", "batch", "none")
COSTS = ("sqeuclidean",)
STD_FLOOR = 1e-5  # added to each neuron's variance: a constant (dead) neuron maps to zero, not NaN


def _mT(xp: Any, x: Any) -> Any:
    return xp.matrix_transpose(x)


def _normalise(xp: Any, x: Any, normalize: str) -> tuple[Any, Any]:
    """``(N(x), r)``: neurons are columns; ``r`` is what the VJP needs (``1/sqrt(var + floor)`` or None)."""
    batch = x.shape[-2]
    if normalize == "none":
        return x, None
    if normalize == "batch":
        return x / math.sqrt(batch), None
    centred = x - xp.mean(x, axis=-2, keepdims=True)
    r = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-2, keepdims=True) + STD_FLOOR)
    return centred * (r / math.sqrt(batch)), r


def _normalise_vjp(xp: Any, z: Any, r: Any, grad: Any, normalize: str) -> Any:
    """VJP of :func:`_normalise` at its output ``z``: for ``"standardize"`` (``z = c r / sqrt(B)``,
    ``c`` the centred neuron) ``(r / sqrt(B)) (g - mean(g) - z <g, z>)``, per column.
    Overwrites ``grad`` where the library allows (it is the caller's temporary)."""
    batch = z.shape[-2]
    if normalize == "none":
        return grad
    if normalize == "batch":
        grad *= 1.0 / math.sqrt(batch)
        return grad
    dot = xp.sum(grad * z, axis=-2, keepdims=True)
    grad -= xp.mean(grad, axis=-2, keepdims=True)
    grad -= z * dot
    grad *= r / math.sqrt(batch)
    return grad


def _solve(xp: Any, x: Any, y: Any, epsilon: float, tol: float, max_iter: int, scaling: bool) -> tuple[Any, Any]:
    """``(W, P)`` for the squared Euclidean cost between the columns of ``x`` and ``y``.

    The cost is one matrix product, ``[-2 x; 1; |x|^2]^T [y; |y|^2; 1]``; the
    plan is the engine's kernel scaled in place (:func:`softk._ot.solved.solved_plan`:
    one exponential, its entries that would be subnormal exact zeros, ``error``
    measured on it) and ``W = <f, a> + <g, b>`` from its potentials.
    """
    dev = device(x)
    p, q = x.shape[-1], y.shape[-1]
    ones_x = xp.ones((*x.shape[:-2], 1, p), dtype=x.dtype, device=dev)
    ones_y = xp.ones((*y.shape[:-2], 1, q), dtype=y.dtype, device=dev)
    left = xp.concat([-2.0 * x, ones_x, xp.sum(x * x, axis=-2, keepdims=True)], axis=-2)
    right = xp.concat([y, xp.sum(y * y, axis=-2, keepdims=True), ones_y], axis=-2)
    cost = _mT(xp, left) @ right
    log_a = xp.full((*cost.shape[:-2], p), -math.log(p), dtype=x.dtype, device=dev)
    log_b = xp.full((*cost.shape[:-2], q), -math.log(q), dtype=x.dtype, device=dev)
    plan, f, g, _, _ = solved_plan(xp, cost, log_a, log_b, epsilon, tol=tol, max_iter=max_iter, scaling=scaling, what="ot_transfer_loss")
    return xp.mean(f, axis=-1) + xp.mean(g, axis=-1), plan


def _forward(xp, student, teacher, *, epsilon, normalize, debias, tol, max_iter, scaling):
    s, rs = _normalise(xp, student, normalize)
    t, rt = _normalise(xp, teacher, normalize)
    value, plan = _solve(xp, s, t, epsilon, tol, max_iter, scaling)
    residuals = [plan]
    if debias:
        w_ss, p_ss = _solve(xp, s, s, epsilon, tol, max_iter, scaling)
        w_tt, p_tt = _solve(xp, t, t, epsilon, tol, max_iter, scaling)
        value = value - 0.5 * (w_ss + w_tt)
        residuals += [p_ss, p_tt]
    if normalize != "none":  # else s, t are the inputs, which the backward receives anyway
        residuals += [s, t]
    if normalize == "standardize":
        residuals += [rs, rt]
    return value, tuple(residuals)


def _backward(xp, arrays, residuals, cotangent, *, epsilon, normalize, debias, tol, max_iter, scaling, needs=(True, True)):
    plan, rest = residuals[0], list(residuals[1:])
    p_ss, p_tt = (rest.pop(0), rest.pop(0)) if debias else (None, None)
    s, t = (rest.pop(0), rest.pop(0)) if normalize != "none" else arrays
    rs, rt = rest if normalize == "standardize" else (None, None)
    cot = cotangent[..., None, None]
    grads: list[Any] = []
    # dW/ds = 2 (s diag(a) - t P^T), dW/dt = 2 (t diag(b) - s P); debiased, the a s terms of
    # W(s, t) and W(s, s) / 2 cancel. A frozen layer (needs False) costs no matrix product.
    for x, other, pt, self_plan, r, need in ((s, t, _mT(xp, plan), p_ss, rs, needs[0]), (t, s, plan, p_tt, rt, needs[1])):
        if not need:
            grads.append(None)
            continue
        grad = other @ pt
        grad *= -2.0 * cot
        grad += cot * (x @ (self_plan + _mT(xp, self_plan)) if debias else (2.0 / x.shape[-1]) * x)
        grads.append(_normalise_vjp(xp, x, r, grad, normalize))
    return tuple(grads)


TRANSFER = CoreOp("ot_transfer_loss", _forward, _backward, needs=True)


@differentiable(TRANSFER)
def ot_transfer_loss(student, teacher, *, epsilon, cost="sqeuclidean", normalize="standardize", debias=False, tol=1e-4, max_iter=1000, scaling=False):
    """Entropic OT cost between the neuron sets of two layers (a transfer regulariser).

    ``student`` (..., B, p) and ``teacher`` (..., B, q) are activations on the
    same batch of ``B`` examples; neuron ``i`` is the column ``[:, i]``. With
    ``s_i, t_j`` the normalised neurons, returns
    ``W = min_P <P, C> + eps KL(P | a b^T)``, ``C_ij = ||s_i - t_j||^2``,
    uniform ``a = 1/p``, ``b = 1/q``: invariant to permuting either layer's neurons.

    Parameters
    ----------
    student, teacher : arrays (..., B, p), (..., B, q)
        Activations; leading dimensions are batch dimensions of the problem.
    epsilon : float
        Entropic regularisation, in the units of the normalised cost (> 0).
    cost : {"sqeuclidean"}
        Squared Euclidean distance between (normalised) neurons.
    normalize : {"standardize", "batch", "none"}
        ``"standardize"``: each neuron centred and divided by its standard
        deviation over the batch (plus ``1e-5`` in the variance) and by ``sqrt(B)``,
        so ``C_ij = 2 - 2 corr(i, j)`` lies in [0, 4] for any layer, batch size
        or activation scale, and one ``epsilon`` (e.g. 0.05) suits every layer.
        ``"batch"``: divided by ``sqrt(B)``, so ``C_ij`` is the mean squared
        difference per example (scale-dependent, batch-size-free).
        ``"none"``: the raw ``||S[:, i] - T[:, j]||^2``.
    debias : bool
        Return the Sinkhorn divergence ``W(s, t) - (W(s, s) + W(t, t)) / 2``
        (zero when the two sets coincide; three solves instead of one).
    tol, max_iter, scaling : float, int, bool
        As in :func:`softk.sinkhorn`: the marginal L1 error the plan must meet
        (a :class:`softk.NotConvergedWarning` otherwise), iteration bound,
        epsilon scaling. Scaling is off by default: on the standardised
        cost (range at most 4) plain iterations from zero potentials converge
        at ``epsilon >= 0.01`` in fewer iterations than the halving schedule
        spends on its stages; turn it on for much smaller ``epsilon``.

    Returns
    -------
    array (...)
        The loss, differentiable in both inputs with the framework's autograd
        (:func:`softk.vjp` on NumPy/CuPy).

    Examples
    --------
    >>> import numpy as np, softk
    >>> from softk.transfer import ot_transfer_loss
    >>> rng = np.random.default_rng(0)
    >>> teacher = rng.normal(size=(64, 6))
    >>> student = teacher[:, ::-1] + 0.1 * rng.normal(size=(64, 6))   # permuted neurons, small noise
    >>> bool(ot_transfer_loss(student, teacher, epsilon=0.01) < 0.05)
    True
    >>> round(float(ot_transfer_loss(teacher, teacher, epsilon=0.01, debias=True)), 8)
    0.0
    """
    xp = namespace_of(student=student, teacher=teacher)
    for name, x in (("student", student), ("teacher", teacher)):
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (..., batch, neurons), got {tuple(x.shape)}")
        if x.shape[-2] == 0:
            raise ValueError(f"{name} has an empty batch: shape {tuple(x.shape)}")
        if x.shape[-1] == 0:
            raise ValueError(f"{name} has no neurons: shape {tuple(x.shape)}")
    if student.dtype != teacher.dtype:
        raise TypeError(f"student and teacher must share one dtype, got {student.dtype} and {teacher.dtype}")
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(
            "student and teacher must be activations on the same batch: shapes (..., B, p) and "
            f"(..., B, q) with equal leading dimensions and B, got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    check_finite_values(xp, "student", student)
    check_finite_values(xp, "teacher", teacher)
    params = dict(
        epsilon=check_positive_float("epsilon", epsilon),
        normalize=check_choice("normalize", normalize, NORMALIZE),
        debias=bool(debias),
        tol=check_positive_float("tol", tol),
        max_iter=check_int("max_iter", max_iter, 1, 10**9),
        scaling=bool(scaling),
    )
    check_choice("cost", cost, COSTS)
    return (student, teacher), params
