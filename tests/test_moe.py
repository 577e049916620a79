"""OT mixture-of-experts routing: capacities exact, gradients flow, bad input, the example at a tiny size."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from softk.moe import moe_route

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))


def test_capacity_per_expert(backend, rng):
    if backend.name == "jax":
        pytest.skip("the solver's JAX path is covered by tests/test_sparse_ot.py (one compile)")
    logits = rng.normal(size=(2, 12, 3))
    r = moe_route(backend.asarray(logits, "float64"), 4)
    dispatch, combine = backend.to_numpy(r.dispatch), backend.to_numpy(r.combine)
    assert (dispatch.sum(-2) <= 4).all()  # at most `capacity` tokens per expert, exactly
    assert ((combine > 0) == (dispatch > 0)).all() and (combine >= 0).all()
    np.testing.assert_allclose(backend.to_numpy(r.dropped), np.clip(1 - combine.sum(-1), 0, None))


def test_experts_per_token(rng):
    r = moe_route(rng.normal(size=(10, 5)), 2, per="token")
    assert (r.dispatch.sum(-1) <= 2).all()


def test_router_prefers_high_logits():
    logits = np.array([[3.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 2.0]])
    r = moe_route(logits, 2)
    assert r.dispatch.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert r.dropped.max() < 1e-9


def test_gradient_reaches_the_logits(rng):
    torch = pytest.importorskip("torch")
    from softk.backends.torch_moe import MoE, OTRouter

    layer = MoE(6, experts=3, hidden=8, router=OTRouter(6, experts=3, capacity=4))
    y, routing = layer(torch.randn(9, 6, generator=torch.Generator().manual_seed(0)))
    y.square().sum().backward()
    assert layer.router.scores.weight.grad is not None and layer.router.scores.weight.grad.abs().sum() > 0
    assert int(routing.dispatch.sum(0).max()) <= 4


@pytest.mark.parametrize(
    "capacity, kwargs, error, match",
    [
        (2, {}, ValueError, "capacity \\* experts must be >= tokens"),
        (0, {}, ValueError, "capacity must satisfy"),
        (6, dict(per="token"), ValueError, "capacity must satisfy"),
        (4, dict(gamma=-1.0), ValueError, "gamma must be"),
        (4, dict(per="layer"), ValueError, "per must be one of"),
    ],
)
def test_bad_input(rng, capacity, kwargs, error, match):
    with pytest.raises(error, match=match):
        moe_route(rng.normal(size=(10, 3)), capacity, **kwargs)


def test_example_runs_at_a_tiny_size():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import moe_digits

    softmax = moe_digits.run("softmax", 0, epochs=1, limit=300)
    ot = moe_digits.run("ot", 0, epochs=1, limit=300)
    for r in (softmax, ot):
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["dropped"] <= 1.0 and r["imbalance"] >= 0.0
    assert ot["imbalance"] <= softmax["imbalance"] + 1e-9  # each expert takes at most its capacity
