"""OT representation transfer (Li, Grandvalet, Flamary, Courty and Dou, 2020).

A layer's activations on a batch, ``S`` of shape (B, p), are a set of ``p``
*neurons*: neuron ``i`` is the column ``S[:, i]``, a point in ``R^B``. The
regulariser is the entropic OT cost between the student's and the teacher's
neuron sets, uniform weights ``a = 1/p``, ``b = 1/q``::

    W = OT_eps(s, t),   C_ij = ||s_i - t_j||^2,   s_i = N(S[:, i]), t_j = N(T[:, j]),

where ``N`` normalises each neuron (``normalize``). ``W`` does not change when
the neurons of either layer are permuted, and ``p`` and ``q`` may differ. With
``debias=True`` it is the Sinkhorn divergence ``W(s, t) - (W(s, s) + W(t, t)) / 2``.

The solve is :func:`softk.sinkhorn` on the ``p x q`` cost (one matrix
product); its plan ``P`` gives the gradient by the envelope theorem, never by
unrolling: ``dW/ds_i = 2 (a s_i - (P t)_i)``, ``dW/dt_j = 2 (b t_j - (P^T s)_j)``
(for ``W(s, s)`` both arguments move: ``2 (2 a s_i - ((P + P^T) s)_i)``),
then the VJP of ``N``.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

import softk

from ._op import CoreOp, differentiable
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
    ``c`` the centred neuron) ``(r / sqrt(B)) (g - mean(g) - z <g, z>)``, per column."""
    batch = z.shape[-2]
    if normalize == "none":
        return grad
    if normalize == "batch":
        return grad / math.sqrt(batch)
    g_centred = grad - xp.mean(grad, axis=-2, keepdims=True)
    return (r / math.sqrt(batch)) * (g_centred - z * xp.sum(grad * z, axis=-2, keepdims=True))


def _solve(xp: Any, x: Any, y: Any, epsilon: float, tol: float, max_iter: int, scaling: bool) -> tuple[Any, Any]:
    """``(W, P)`` for the squared Euclidean cost between the columns of ``x`` and ``y``.

    The cost is one matrix product, ``[-2 x; 1; |x|^2]^T [y; |y|^2; 1]``. Plan
    entries below ``tiny / eps_mach`` are set to zero: the products with them
    in the gradient's matrix products would be subnormal, which CPUs compute
    much slower (those two products took 2.7x longer at ``epsilon = 0.01`` on
    the benchmark's structured layers), and they change no gradient entry by
    more than a rounding.
    """
    dev = device(x)
    ones_x = xp.ones((*x.shape[:-2], 1, x.shape[-1]), dtype=x.dtype, device=dev)
    ones_y = xp.ones((*y.shape[:-2], 1, y.shape[-1]), dtype=y.dtype, device=dev)
    left = xp.concat([-2.0 * x, ones_x, xp.sum(x * x, axis=-2, keepdims=True)], axis=-2)
    right = xp.concat([y, xp.sum(y * y, axis=-2, keepdims=True), ones_y], axis=-2)
    out = softk.sinkhorn(_mT(xp, left) @ right, epsilon=epsilon, tol=tol, max_iter=max_iter, scaling=scaling)
    info = xp.finfo(x.dtype)
    plan = out.plan
    return out.cost, xp.where(plan < info.smallest_normal / info.eps, 0.0, plan)


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


def _backward(xp, arrays, residuals, cotangent, *, epsilon, normalize, debias, tol, max_iter, scaling):
    plan, rest = residuals[0], list(residuals[1:])
    p_ss, p_tt = (rest.pop(0), rest.pop(0)) if debias else (None, None)
    s, t = (rest.pop(0), rest.pop(0)) if normalize != "none" else arrays
    rs, rt = rest if normalize == "standardize" else (None, None)
    p, q = s.shape[-1], t.shape[-1]
    if debias:
        # the a s_i terms of W(s, t) and W(s, s) / 2 cancel
        grad_s = s @ (p_ss + _mT(xp, p_ss)) - 2.0 * (t @ _mT(xp, plan))
        grad_t = t @ (p_tt + _mT(xp, p_tt)) - 2.0 * (s @ plan)
    else:
        grad_s = (2.0 / p) * s - 2.0 * (t @ _mT(xp, plan))
        grad_t = (2.0 / q) * t - 2.0 * (s @ plan)
    cot = cotangent[..., None, None]
    return (
        _normalise_vjp(xp, s, rs, cot * grad_s, normalize),
        _normalise_vjp(xp, t, rt, cot * grad_t, normalize),
    )


TRANSFER = CoreOp("ot_transfer_loss", _forward, _backward)


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
        Passed to :func:`softk.sinkhorn`: row-marginal L1 tolerance, iteration
        bound, epsilon scaling. Scaling is off by default: on the standardised
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
