"""Entropic optimal transport as a public solver: :func:`sinkhorn` and friends.

Problem (docs/maths.md section 1), per leading batch index::

    W = min_{P 1 = a, P^T 1 = b} <P, C> + eps * sum_ij P_ij (log P_ij - log a_i b_j)
      = <f, a> + <g, b>,        P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps).

``C`` is a cost matrix, or ``||x_i - y_j||^2`` between point clouds. Weights
default to uniform and are renormalised (``a / sum(a)``); they must be
positive. One solve (:mod:`softk._ot.kernel`: epsilon scaling and
absorption-stabilised kernel iterations) gives ``f, g``; the value, the plan
and ``P v`` are then differentiable with the framework's own autograd
(``softk.vjp`` on NumPy/CuPy), never by unrolling iterations:

* ``dW/dC = P``, ``dW/da = f - <f, a>``, ``dW/db = g - <g, b>`` (envelope
  theorem; the potentials are gauge-free only up to ``(f + c, g - c)``, and the
  weight gradients are the centred representatives, i.e. the gradients through
  the renormalisation), ``dW/dx_i = 2 (a_i x_i - (P y)_i)``;
* the plan's VJP by implicit differentiation (Schur complement for few
  targets, conjugate gradients with O(n m) matvecs for many).

``P v`` (``apply``) never forms ``P``: row blocks of the plan are formed from
the potentials one at a time (:mod:`softk._ot.online`); online (large point
clouds) its VJP is blockwise too (the implicit VJP for the rank-k plan
cotangent ``G v^T`` needs only products with ``P`` and ``P^T``).

``f`` and ``g`` themselves carry no gradient (their gauge is arbitrary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace

from ._dispatch import values_known
from ._op import differentiable, pytree
from ._ot.ops import APPLY, APPLY_AT, COST, DIVERGENCE, PLAN, PLAN_AT, POTENTIALS, VALUE_AT, broadcast_batch
from ._validate import check_choice, check_finite_values, check_int, check_positive_float, namespace_of

__all__ = ["sinkhorn", "SinkhornOutput", "sinkhorn_cost", "sinkhorn_plan", "sinkhorn_apply", "sinkhorn_divergence"]

ONLINE_ENTRIES = 2**27  # point clouds with more cost entries than this are solved online
METHODS = ("sinkhorn", "newton")
DEFAULT_TOL = {64: 1e-6, 32: 1e-4, 16: 1e-2}  # marginal error by the dtype's bits: above its rounding floor


@pytree("_params")
@dataclass(frozen=True)
class SinkhornOutput:
    """Result of :func:`sinkhorn`. ``f``, ``g``, ``plan``, ``cost`` and ``apply`` are differentiable.

    A pytree: ``jax.jit``, ``jax.vmap`` and ``torch.compile`` return it as it is.

    Attributes
    ----------
    f, g : arrays (..., n), (..., m)
        Dual potentials in the gauge ``<f, a> = <g, b>`` (each half of the value); differentiable
        by implicit differentiation of the marginal constraints.
    error : 0-d array
        Worst ``||P 1 - a||_1 + ||P^T 1 - b||_1`` over the batch, measured on the plan of the
        returned ``f, g`` (what ``plan`` returns, rounding included).
    n_iter : 0-d integer array
        Sinkhorn iterations (Newton steps) run, over all epsilon stages.
    converged : 0-d bool array
        ``error <= tol``.
    """

    f: Any
    g: Any
    error: Any
    n_iter: Any
    converged: Any
    _arrays: tuple
    _params: tuple  # the ops' static parameters, as sorted (name, value) pairs (hashable)

    @property
    def plan(self) -> Any:
        """``P`` (..., n, m), formed on access; differentiable (implicit VJP)."""
        return PLAN_AT.bind(*self._arrays, **dict(self._params))

    @property
    def cost(self) -> Any:
        """The regularised OT value ``W = <f, a> + <g, b>`` (...,); differentiable (envelope VJP)."""
        return VALUE_AT.bind(*self._arrays, **dict(self._params))

    def apply(self, v: Any) -> Any:
        """``P @ v`` for ``v`` of shape (m,) or (..., m, k); differentiable in ``v`` and the problem.

        ``P`` is never formed: one row block of it at a time (``softk._ot.blocks.BLOCK_ENTRIES``
        entries), from the cost matrix's rows or, for point clouds, from the points.
        The VJP is ``P^T cot`` for ``v`` and the plan's implicit VJP contracted
        with ``cot v^T`` for the problem: blockwise with memory O((n + m) k) when
        the problem was solved online, otherwise on the formed plan (n x m, like
        the cost matrix or its gradient)."""
        namespace_of(problem=self._arrays[0], v=v)
        if v.dtype != self._arrays[0].dtype:
            raise TypeError(f"v must have the problem's dtype {self._arrays[0].dtype}, got {v.dtype}")
        m = self.g.shape[-1]
        vector = v.ndim == 1
        if v.ndim < 1 or v.shape[-1 if vector else -2] != m:
            raise ValueError(f"v must have shape ({m},) or (..., {m}, k), got {tuple(v.shape)}")
        out = APPLY_AT.bind(*self._arrays, v[:, None] if vector else v, **dict(self._params))
        return out[..., 0] if vector else out


def sinkhorn(
    cost: Any = None,
    *,
    x: Any = None,
    y: Any = None,
    a: Any = None,
    b: Any = None,
    epsilon: float,
    tol: float | None = None,
    max_iter: int = 10_000,
    init: tuple[Any, Any] | None = None,
    check_every: int = 5,
    scaling: bool = True,
    online: bool | None = None,
    method: str = "sinkhorn",
) -> SinkhornOutput:
    """Solve entropic OT between weights ``a`` and ``b`` for a cost matrix or two point clouds.

    Parameters
    ----------
    cost : array (..., n, m), optional
        Cost matrix (any leading batch dimensions). Give either ``cost`` or both ``x`` and ``y``.
    x, y : arrays (..., n, d), (..., m, d), optional
        Point clouds; the cost is ``||x_i - y_j||^2``.
    a, b : arrays (..., n), (..., m), optional
        Positive weights, renormalised to sum to one; uniform when omitted.
    epsilon : float
        Entropic regularisation, in cost units (> 0).
    tol : float, optional
        Converged when the marginal error of the returned plan, ``||P 1 - a||_1 + ||P^T 1 - b||_1``,
        is ``<= tol``. Default by dtype (:data:`DEFAULT_TOL`): 1e-6 in float64, 1e-4 in
        float32, 1e-2 in float16, above each dtype's rounding floor on costs of order one
        at epsilon >= 1e-3. The solvers check their own estimate every ``check_every`` iterations
        (5: the dense solver's over-relaxation restarts plain at each check, and stages end only
        at checks); the error is then measured once on the returned potentials.
    max_iter : int
        Iteration bound over all stages; a :class:`softk.NotConvergedWarning` says when the
        returned plan misses ``tol`` (the bound was hit, or the dtype's rounding at this
        ``epsilon`` does not allow ``tol``: the message says which).
    init : (f, g), optional
        Warm start (e.g. a previous result's ``f, g``); disables epsilon scaling.
    scaling : bool
        Epsilon scaling (halving from the cost range down to ``epsilon``).
    online : bool, optional
        Point clouds only: never form the cost matrix; cost blocks are computed
        on the fly (:mod:`softk._ot.online`), memory O(n + m). Default: when
        ``n * m`` exceeds ``ONLINE_ENTRIES`` (2^27). ``cost``, ``apply`` and
        their gradients then stay O(n + m) (O((n + m) k) for ``apply``);
        ``plan`` forms ``P``.
    method : {"sinkhorn", "newton"}
        ``"newton"``: Newton's method on the semi-dual in the ``m`` target
        potentials (:mod:`softk._ot.newton`), for few targets (each step costs
        O(n m^2 + m^3)) or tiny ``epsilon``. It reaches tight marginals in a few dozen
        steps where Sinkhorn needs thousands, at any ``epsilon``. Rows are then
        exact by construction and the solver stops on the relative column
        error ``max_j |(P^T 1)_j / b_j - 1|`` (which bounds the columns' L1 error);
        rounding limits it to about ``4 ulp max|C| / epsilon`` (``ulp`` = 1.2e-7
        in float32).
        ``max_iter`` counts Newton steps, ``scaling`` is epsilon continuation
        from the cost's range, ``check_every`` does not apply. Needs ``m >= 2``
        and a formed cost (not ``online``). The gradients are the same
        (they depend on the solution only).

    Returns
    -------
    SinkhornOutput

    Examples
    --------
    >>> import numpy as np, softk
    >>> x = np.array([[0.0], [1.0]]); y = np.array([[0.1], [0.9]])
    >>> out = softk.sinkhorn(x=x, y=y, epsilon=1e-3)
    >>> np.round(out.plan, 6).tolist(), bool(out.converged)
    ([[0.5, 0.0], [0.0, 0.5]], True)
    >>> round(float(out.cost), 6)   # <P, C> + eps KL(P | a b^T) = 0.01 + 1e-3 log 2
    0.010693
    """
    arrays, params, (n, m) = _prepare(cost, x, y, a, b, epsilon, tol, max_iter, check_every, scaling, online, method)
    xp = array_namespace(*arrays)
    extra = () if init is None else _check_init(init, arrays[0], n, m)
    f, g, error, n_iter = POTENTIALS.bind(*arrays, *extra, **params, has_init=bool(extra))
    fg = xp.concat([f, g], axis=-1)
    return SinkhornOutput(f, g, error, n_iter, error <= params["tol"], (*arrays, fg), tuple(sorted(params.items())))


@differentiable(COST)
def sinkhorn_cost(cost=None, *, x=None, y=None, a=None, b=None, epsilon, tol=None, max_iter=10_000, check_every=5, scaling=True, online=None, method="sinkhorn"):
    """The regularised OT value ``W`` alone: ``sinkhorn(...).cost`` as one operator.

    For :func:`softk.vjp` (gradients on NumPy/CuPy); the pullback returns one
    gradient per array given, in the order ``cost`` (or ``x, y``), ``a``, ``b``.

    Examples
    --------
    >>> import numpy as np, softk
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> w, pullback = softk.vjp(softk.sinkhorn_cost, C, epsilon=1e-3)
    >>> (grad_c,) = pullback(np.ones(()))   # dW/dC = P
    >>> np.round(grad_c, 6).tolist()
    [[0.5, 0.0], [0.0, 0.5]]
    """
    return _prepare(cost, x, y, a, b, epsilon, tol, max_iter, check_every, scaling, online, method)[:2]


@differentiable(PLAN)
def sinkhorn_plan(cost=None, *, x=None, y=None, a=None, b=None, epsilon, tol=None, max_iter=10_000, check_every=5, scaling=True, online=None, method="sinkhorn"):
    """The plan ``P`` alone: ``sinkhorn(...).plan`` as one operator (for :func:`softk.vjp`).

    >>> import numpy as np, softk
    >>> np.round(softk.sinkhorn_plan(np.array([[0.0, 1.0], [1.0, 0.0]]), epsilon=1e-3), 6).tolist()
    [[0.5, 0.0], [0.0, 0.5]]
    """
    return _prepare(cost, x, y, a, b, epsilon, tol, max_iter, check_every, scaling, online, method)[:2]


@differentiable(APPLY)
def sinkhorn_apply(cost=None, *, x=None, y=None, a=None, b=None, v, epsilon, tol=None, max_iter=10_000, check_every=5, scaling=True, online=None, method="sinkhorn"):
    """``P @ v`` alone (``v`` of shape (..., m, k)): ``sinkhorn(...).apply(v)`` as one operator.

    For :func:`softk.vjp`; the pullback returns one gradient per array given, in
    the order ``cost`` (or ``x, y``), ``a``, ``b``, ``v``.

    >>> import numpy as np, softk
    >>> C = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> pv, pullback = softk.vjp(sinkhorn_apply, C, v=np.array([[1.0], [3.0]]), epsilon=1e-3)
    >>> np.round(pv, 6).tolist()
    [[0.5], [1.5]]
    >>> grad_c, grad_v = pullback(np.array([[1.0], [0.0]]))
    >>> np.round(grad_v, 6).tolist()   # P^T e_1
    [[0.5], [0.0]]
    """
    arrays, params, (n, m) = _prepare(cost, x, y, a, b, epsilon, tol, max_iter, check_every, scaling, online, method)
    namespace_of(problem=arrays[0], v=v)
    if v.ndim < 2 or v.shape[-2] != m:
        raise ValueError(f"v must have shape (..., {m}, k), got {tuple(v.shape)}")
    return (*arrays, v), params


@differentiable(DIVERGENCE)
def sinkhorn_divergence(x: Any, y: Any, a: Any = None, b: Any = None, *, epsilon: float, tol: float | None = None, max_iter: int = 10_000, check_every: int = 5, scaling: bool = True, online: bool | None = None) -> Any:
    """Debiased ``S(x, y) = W(x, y) - (W(x, x) + W(y, y)) / 2`` (squared Euclidean cost).

    Non-negative, zero when the two weighted clouds coincide; differentiable in
    ``x, y, a, b`` with the framework's autograd (``softk.vjp`` on NumPy/CuPy,
    one gradient per array given). The options are :func:`sinkhorn`'s. The
    self-terms ``W(x, x)`` are solved by the symmetric strategy
    (:mod:`softk._ot.symmetric`: ``f <- (f + T(f)) / 2``, a few dozen
    iterations where alternating updates oscillate), with epsilon scaling if
    ``scaling``; their potentials warm-start the cross term ``W(x, y)``. Each
    of the three solves warns if its plan misses ``tol``.

    >>> import numpy as np, softk
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> abs(float(softk.sinkhorn_divergence(x, x, epsilon=0.01))) < 1e-12
    True
    """
    arrays, params, _ = _prepare(None, x, y, a, b, epsilon, tol, max_iter, check_every, scaling, online, "sinkhorn")
    return arrays, params


def _prepare(cost, x, y, a, b, epsilon, tol, max_iter, check_every, scaling, online=None, method="sinkhorn") -> tuple[tuple, dict, tuple]:
    """Validate; return ``(arrays, params, (n, m))``."""
    if cost is not None and (x is not None or y is not None):
        raise TypeError("give either cost or the point clouds x and y, not both")
    if cost is None and (x is None or y is None):
        raise TypeError("give a cost matrix, or both point clouds x and y")
    geometry = {"cost": cost} if cost is not None else {"x": x, "y": y}
    weights = {k: v for k, v in (("a", a), ("b", b)) if v is not None}
    xp = namespace_of(**geometry, **weights)
    dtypes = {name: arr.dtype for name, arr in {**geometry, **weights}.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"all arrays must share one dtype, got {dtypes}")
    if cost is not None:
        if cost.ndim < 2:
            raise ValueError(f"cost must have shape (..., n, m), got {tuple(cost.shape)}")
        n, m = cost.shape[-2:]
    else:
        for name, arr in geometry.items():
            if arr.ndim < 2:
                raise ValueError(f"{name} must have shape (..., points, dim), got {tuple(arr.shape)}")
        if x.shape[-1] != y.shape[-1]:
            raise ValueError(f"x and y must have the same dimension, got {x.shape[-1]} and {y.shape[-1]}")
        n, m = x.shape[-2], y.shape[-2]
    if n < 1 or m < 1:
        raise ValueError(f"the problem must have at least one source and one target, got n={n}, m={m}")
    batch = cost.shape[:-2] if cost is not None else broadcast_batch(x.shape[:-2], y.shape[:-2], "x and y")
    if 0 in batch:
        raise ValueError(f"the batch is empty (batch shape {tuple(batch)}): there is no problem to solve")
    for name, arr in geometry.items():
        check_finite_values(xp, name, arr)
    for name, arr, size in (("a", a, n), ("b", b, m)):
        if arr is None:
            continue
        if arr.ndim < 1 or arr.shape[-1] != size:
            raise ValueError(f"{name} must have shape (..., {size}) to match the cost, got {tuple(arr.shape)}")
        broadcast_batch(arr.shape[:-1], batch, f"{name} and the problem")
        check_finite_values(xp, name, arr)
        if values_known(xp, arr) and not bool(xp.all(arr > 0)):
            raise ValueError(f"{name} must be positive (drop points with zero weight)")
    params = dict(
        names=(*geometry, *weights),
        epsilon=check_positive_float("epsilon", epsilon),
        tol=DEFAULT_TOL[xp.finfo(geometry[next(iter(geometry))].dtype).bits] if tol is None else check_positive_float("tol", tol),
        max_iter=check_int("max_iter", max_iter, 1, 10**9),
        check_every=check_int("check_every", check_every, 1, 10**6),
        scaling=bool(scaling),
        online=_online(online, cost is not None, n * m),
        method=check_choice("method", method, METHODS),
    )
    if params["method"] == "newton" and (params["online"] or m < 2):
        raise ValueError(f"method='newton' needs at least 2 targets and a formed cost (not online), got m={m}, online={params['online']}")
    return (*geometry.values(), *weights.values()), params, (n, m)


def _online(online: Any, matrix: bool, entries: int) -> bool:
    if online is None:
        return not matrix and entries > ONLINE_ENTRIES
    if not isinstance(online, bool):
        raise TypeError(f"online must be a bool or None, got {online!r}")
    if online and matrix:
        raise ValueError("online=True needs point clouds x and y (a cost matrix is already formed)")
    return online


def _check_init(init: Any, like: Any, n: int, m: int) -> tuple:
    if not isinstance(init, (tuple, list)) or len(init) != 2:
        raise TypeError("init must be a pair (f, g) of potentials")
    f, g = init
    xp = namespace_of(problem=like, init_f=f, init_g=g)
    for name, arr, size in (("init f", f, n), ("init g", g, m)):
        if arr.ndim < 1 or arr.shape[-1] != size:
            raise ValueError(f"{name} must have shape (..., {size}), got {tuple(arr.shape)}")
        if arr.dtype != like.dtype:
            raise TypeError(f"{name} must have the problem's dtype {like.dtype}, got {arr.dtype}")
        check_finite_values(xp, name, arr)
    return (f, g)
