"""softk: differentiable optimal-transport operators on any array-API backend.

One array-API core (``softk``) defines each operator as a forward and a VJP;
``softk.backends`` registers that VJP with PyTorch, JAX, NumPy and CuPy.

>>> import numpy as np, softk
>>> softk.soft_topk(np.array([1.0, 5.0, 3.0]), 1, epsilon=1e-3).round(6).tolist()
[0.0, 1.0, 0.0]
"""

from ._dispatch import preload as _preload
from ._op import vjp
from ._warnings import NotConvergedWarning
from .beam import BeamSearchOutput, beam_search
from .enot import ENOT, PowerCost, expectile_loss
from .gaussian_ot import gaussian_map, gaussian_w2, l2_uvp
from .moe import Routing, moe_route
from .ot import SinkhornOutput, sinkhorn, sinkhorn_apply, sinkhorn_cost, sinkhorn_divergence, sinkhorn_plan
from .sorting import soft_quantile, soft_rank, soft_sort
from .sorting_topk import soft_topk_sorted
from .sparse_ot import MarginalGapWarning, SparseOTResult, sparse_ot, sparse_ot_plan, sparse_ot_value
from .sparse_projection import sparse_simplex_projection
from .topk import soft_topk
from .topp import soft_topp
from .transfer import ot_transfer_loss

__all__ = [
    "soft_topk",
    "soft_topk_sorted",
    "soft_topp",
    "soft_sort",
    "soft_rank",
    "soft_quantile",
    "beam_search",
    "BeamSearchOutput",
    "sinkhorn",
    "sinkhorn_cost",
    "sinkhorn_plan",
    "sinkhorn_apply",
    "sinkhorn_divergence",
    "ot_transfer_loss",
    "sparse_ot",
    "sparse_ot_value",
    "sparse_ot_plan",
    "SparseOTResult",
    "MarginalGapWarning",
    "sparse_simplex_projection",
    "moe_route",
    "Routing",
    "ENOT",
    "PowerCost",
    "expectile_loss",
    "gaussian_map",
    "gaussian_w2",
    "l2_uvp",
    "SinkhornOutput",
    "vjp",
    "NotConvergedWarning",
]
__version__ = "0.1.0"

_preload()
