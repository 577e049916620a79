"""The entropic-OT engine behind every operator: one problem, named strategies, one gradient module.

Strategies (each returns a :class:`softk._ot.dense.SinkhornResult`):

* :mod:`~softk._ot.dense`: log-domain Sinkhorn on a formed cost, and the
  bounded loop every traced (``jax.jit``) solve runs;
* :mod:`~softk._ot.kernel`: absorption-stabilised kernel iterations (eager, dense);
* :mod:`~softk._ot.online`: point clouds in row blocks (:mod:`~softk._ot.blocks`), O(n + m) memory;
* :mod:`~softk._ot.newton`: Newton on the semi-dual, for few targets or tiny epsilon;
* :mod:`~softk._ot.symmetric`: the self-transport ``OT(x, x)`` of the Sinkhorn divergence.

Shared pieces: :mod:`~softk._ot.schedule` (epsilon schedule, over-relaxation,
constants), :mod:`~softk._ot.plan` (the plan from potentials, the guarded
exponential, the marginal error that is reported), :mod:`~softk._ot.implicit`
(implicit differentiation), :mod:`~softk._ot.costs`. :mod:`~softk._ot.ops`
binds them as differentiable core ops for :mod:`softk.ot`.
"""
