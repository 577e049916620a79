"""asv benchmarks: small PyTorch calls, forward + backward, softk (eager and compiled) beside its peers.

Batch 32, k = 5, float32, epsilon 0.1 (the paper's normalisation); ``impl``:
``torch.topk`` (the hard forward, the yardstick), ``lapsum`` (LapSum's closed form,
``../lapsum.py``, at the same temperature), ``softk`` (eager) and ``softk_compiled``
(``torch.compile(fullgraph=True, dynamic=False)``, compiled in ``setup``). One thread.
``../compare_small.py`` prints the same comparison as a table.
"""

from __future__ import annotations

import os
import sys
import warnings

import softk

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lapsum import lapsum_topk  # noqa: E402

K, EPSILON = 5, 0.1


class SmallCalls:
    params = (["torch.topk", "lapsum", "softk", "softk_compiled"], [100, 1_000, 100_000])
    param_names = ["impl", "n"]
    timeout = 600

    def setup(self, impl: str, n: int) -> None:
        if torch is None:
            raise NotImplementedError("torch is not installed")
        torch.set_num_threads(1)
        warnings.simplefilter("ignore", UserWarning)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, n, generator=gen).requires_grad_(True)
        self.v = torch.randn(32, n, generator=gen)
        radius = float(torch.maximum(self.x.max() - 0.5, 0.5 - self.x.min()) + 0.5)
        ops = {
            "lapsum": lambda x: lapsum_topk(x, K, radius * radius * EPSILON / 2.0),
            "softk": lambda x: softk.soft_topk(x, K, epsilon=EPSILON),
            "softk_compiled": torch.compile(lambda x: softk.soft_topk(x, K, epsilon=EPSILON), fullgraph=True, dynamic=False),
        }
        if impl == "torch.topk":
            self.call = lambda: torch.topk(self.x.detach(), K)
        else:
            op = ops[impl]
            self.call = lambda: torch.autograd.grad(op(self.x), self.x, self.v)
        self.call()  # compiles where it compiles

    def time_forward_backward(self, impl: str, n: int) -> None:
        """``torch.topk``: forward only (it has no soft gradient)."""
        self.call()
