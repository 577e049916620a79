"""softk sharded over several devices: JAX (``jax.sharding``) and PyTorch (``torch.distributed``).

JAX: one subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(the flag only counts before JAX is imported) solves each problem sharded and
on one device, and reports the differences and the compiled HLO's collectives
as JSON. PyTorch: two gloo processes on CPU run the point-sharded example of
docs/distributed.md and compare with the single-process solve.
"""

from __future__ import annotations

import doctest
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

DEVICES = 4

JAX_SCRIPT = textwrap.dedent(
    r"""
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import softk, softk._ot.blocks
    from softk.backends.jax_sharding import device_mesh, replicate, shard_batch, shard_points

    assert jax.device_count() == 4, jax.devices()
    EPS, TOL, CHECK = 0.5, 1e-9, 2  # a short unrolled block: quick to compile
    COLLECTIVE = r"= (\S+) (all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)\("
    rng = np.random.default_rng(0)

    def loss(online, weights):
        def fn(x, y, a):
            out = softk.sinkhorn(x=x, y=y, a=a if weights else None, epsilon=EPS, tol=TOL, online=online, check_every=CHECK)
            return out.cost.sum(), (out.f, out.g, out.converged)
        return jax.value_and_grad(fn, argnums=(0, 1, 2), has_aux=True)

    def solve(fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        (value, (f, g, conv)), grads = compiled(*args)
        return dict(value=value, f=f, g=g, conv=bool(conv), grads=grads, sharding=list(getattr(grads[0].sharding, "spec", ()))), compiled.as_text()

    def compare(name, x, y, a, xs, ys, as_, online=False, weights=False):
        fn = loss(online, weights)
        ref, _ = solve(fn, x, y, a)
        try:
            out, hlo = solve(fn, xs, ys, as_)
        except Exception as exc:  # reported by the case's test
            report[name] = dict(error=f"{type(exc).__name__}: {exc}"[:2000])
            return
        shift = jnp.mean(out["f"] - ref["f"], axis=-1, keepdims=True)  # the gauge (f + c, g - c)
        shapes = sorted(set(re.findall(r"f64\[[\d,]+\]", hlo)))
        report[name] = dict(
            converged=[ref["conv"], out["conv"]],
            value=float(jnp.max(jnp.abs(out["value"] - ref["value"]))),
            scale=float(jnp.max(jnp.abs(ref["value"]))),
            f=float(jnp.max(jnp.abs(out["f"] - ref["f"] - shift))),
            g=float(jnp.max(jnp.abs(out["g"] - ref["g"] + shift))),
            grads=[float(jnp.max(jnp.abs(s - r))) for s, r in zip(out["grads"], ref["grads"])],
            grad_scale=float(max(jnp.max(jnp.abs(r)) for r in ref["grads"])),
            sharding=out["sharding"],
            collectives=sorted(set(re.findall(COLLECTIVE, hlo))),
            shapes=shapes,
        )

    report = {}
    mesh = device_mesh()
    # batch sharding: 4 problems, one per device
    x, y = jnp.asarray(rng.normal(size=(4, 16, 2))), jnp.asarray(rng.normal(size=(4, 12, 2)))
    a = jnp.asarray(rng.uniform(0.5, 1.5, size=(4, 16)))
    for online in (False, True):
        compare(f"batch-{'online' if online else 'dense'}", x, y, a, shard_batch(x, mesh), shard_batch(y, mesh),
                shard_batch(a, mesh), online=online, weights=True)
    # point sharding: x's 64 points over 4 devices, y replicated
    x, y = jnp.asarray(rng.normal(size=(64, 2))), jnp.asarray(rng.normal(size=(48, 2)) + 0.5)
    a = jnp.asarray(rng.uniform(0.5, 1.5, size=64))
    xs, ys, as_ = shard_points(x, mesh), replicate(y, mesh), shard_points(a, mesh, axis=-1)
    compare("points-dense", x, y, a, xs, ys, as_, weights=True)
    compare("points-online", x, y, a, xs, ys, as_, online=True, weights=True)
    block_entries, softk._ot.blocks.BLOCK_ENTRIES = softk._ot.blocks.BLOCK_ENTRIES, 16 * 48  # several row blocks
    compare("points-online-blocks", x, y, a, xs, ys, as_, online=True)
    softk._ot.blocks.BLOCK_ENTRIES = block_entries
    # Explicit mesh axes (jax.make_mesh's default): the glue runs each op under auto_axes
    explicit = device_mesh(explicit=True)
    compare("points-explicit", x, y, a, shard_points(x, explicit), replicate(y, explicit),
            shard_points(a, explicit, axis=-1), weights=True)
    print("REPORT" + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def jax_report(tmp_path_factory):
    pytest.importorskip("jax")
    # fake CPU devices; cheap code generation (the partitioning, which the tests inspect, is unchanged)
    flags = f"--xla_force_host_platform_device_count={DEVICES} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    # run outside the checkout: ``python -c`` puts the working directory first on sys.path, where
    # the source folder softk/ would shadow the installed package (which has softk.backends)
    cwd = tmp_path_factory.mktemp("sharding")
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "NotConvergedWarning" not in proc.stderr, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


CASES = ["batch-dense", "batch-online", "points-dense", "points-online", "points-online-blocks", "points-explicit"]


@pytest.mark.parametrize("case", CASES)
def test_jax_sharded_matches_single_device(jax_report, case):
    r = jax_report[case]
    assert "error" not in r, r.get("error")
    assert r["converged"] == [True, True]
    assert r["value"] <= 1e-10 * max(1.0, r["scale"])
    assert r["f"] <= 1e-10 and r["g"] <= 1e-10
    assert max(r["grads"]) <= 1e-10 * max(1.0, r["grad_scale"])
    assert r["grad_scale"] > 1e-3  # the gradients are not trivially zero


def _collectives(r, kind):
    return [shape for shape, op in r["collectives"] if op == kind]


@pytest.mark.parametrize("case", ["points-dense", "points-online", "points-explicit"])
def test_jax_point_sharding_is_partitioned(jax_report, case):
    r = jax_report[case]
    assert "error" not in r, r.get("error")
    # the log-sum-exp over x's points is a cross-device reduction of m-vectors
    assert any(shape.startswith("f64[48]") for shape in _collectives(r, "all-reduce")), r["collectives"]
    # every device holds a quarter of x (and of the cost rows), nobody gathers x or the cost matrix
    assert "f64[16,2]" in r["shapes"]
    assert "f64[64,48]" not in r["shapes"] and "f64[48,64]" not in r["shapes"]
    assert not [s for s in _collectives(r, "all-gather") if s.startswith(("f64[64,2]", "f64[2,64]"))], r["collectives"]
    assert r["sharding"][:1] == ["devices"]  # dW/dx comes back sharded like x
    if case == "points-dense":
        assert "f64[16,48]" in r["shapes"]  # the local cost block


@pytest.mark.parametrize("case", ["batch-dense", "batch-online"])
def test_jax_batch_sharding_is_local(jax_report, case):
    r = jax_report[case]
    assert "error" not in r, r.get("error")
    assert "f64[1,16,2]" in r["shapes"] and "f64[4,16,2]" not in r["shapes"]
    # only the stopping test (the worst error over the batch) crosses devices: scalars, no gathers
    assert all(shape.startswith(("f64[]", "pred[]", "s32[]", "s64[]")) for shape, _ in r["collectives"]), r["collectives"]
    assert r["sharding"][:1] == ["devices"]


def test_jax_sharding_helpers():
    pytest.importorskip("jax")
    from softk.backends import jax_sharding

    assert doctest.testmod(jax_sharding, optionflags=doctest.ELLIPSIS).failed == 0
    import jax.numpy as jnp

    with pytest.raises(ValueError, match="out of range"):
        jax_sharding.shard_points(jnp.zeros(3), axis=-2)


# --- PyTorch: 2 gloo processes ---------------------------------------------------------------

TORCH_DATA = textwrap.dedent(
    """
    import torch
    EPS, TOL = 0.5, 1e-12
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(40, 2, generator=gen, dtype=torch.float64), torch.randn(30, 2, generator=gen, dtype=torch.float64) + 0.5
    A, B = torch.rand(40, generator=gen, dtype=torch.float64) + 0.5, torch.rand(30, generator=gen, dtype=torch.float64) + 0.5
    XB, YB = torch.randn(4, 10, 2, generator=gen, dtype=torch.float64), torch.randn(4, 8, 2, generator=gen, dtype=torch.float64)
    W0 = torch.tensor([[1.0, 0.5], [-0.2, 0.8]], dtype=torch.float64)

    def model():
        lin = torch.nn.Linear(2, 2).double()
        with torch.no_grad():
            lin.weight.copy_(W0)
            lin.bias.zero_()
        return lin
    """
)

TORCH_RANK = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    import softk
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * 40 // world, (rank + 1) * 40 // world)
    # point splitting: the docs' sharded_sinkhorn_cost
    x, y = X[rows].clone().requires_grad_(True), Y.clone().requires_grad_(True)
    share = sharded_sinkhorn_cost(x, y, A[rows], B, EPS, tol=TOL)
    share.backward()
    dist.all_reduce(y.grad)
    value = share.detach().clone()
    dist.all_reduce(value)
    f, g = sharded_potentials(X[rows], Y, A[rows], B, EPS, tol=TOL)
    # data parallelism: each rank its half of the batch, DDP averages the gradients
    net = DDP(model())
    mine = slice(rank * 4 // world, (rank + 1) * 4 // world)
    softk.sinkhorn_divergence(net(XB[mine]), YB[mine], epsilon=EPS).mean().backward()
    out = dict(value=float(value), f=f.tolist(), g=g.tolist(), grad_x=x.grad.tolist(), grad_y=y.grad.tolist(),
               grad_w=net.module.weight.grad.tolist(), grad_b=net.module.bias.grad.tolist())
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh)
    dist.destroy_process_group()
    # gloo's and dynamo's teardown at interpreter exit can abort ("terminate called
    # without an active exception") after the work is done: leave without it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    """
)


def _docs_code(marker: str) -> str:
    page = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "distributed.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M) if marker in b]
    assert len(blocks) == 1, f"docs/distributed.md should have one python block defining {marker}"
    return blocks[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torch_ranks(tmp_path_factory):
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "rank.py"
    script.write_text(_docs_code("def sharded_sinkhorn_cost") + TORCH_DATA + TORCH_RANK)
    port, world = _free_port(), 2
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp / f"{rank}.json")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the torch.distributed ranks did not finish")
        assert proc.returncode == 0, err[-4000:]
    return [json.loads((tmp / f"{rank}.json").read_text()) for rank in range(world)]


def test_torch_point_split_matches_single_process(torch_ranks):
    import softk

    space: dict = {}
    exec(TORCH_DATA, space)
    x, y = space["X"].clone().requires_grad_(True), space["Y"].clone().requires_grad_(True)
    out = softk.sinkhorn(x=x, y=y, a=space["A"], b=space["B"], epsilon=space["EPS"], tol=space["TOL"])
    out.cost.backward()
    f_ref, g_ref = out.f.detach().numpy(), out.g.detach().numpy()
    f = np.concatenate([r["f"] for r in torch_ranks])
    g = np.asarray(torch_ranks[0]["g"])
    assert all(np.allclose(r["g"], g, rtol=0, atol=0) for r in torch_ranks)  # g is shared
    shift = np.mean(f - f_ref)  # the gauge (f + c, g - c)
    assert np.max(np.abs(f - f_ref - shift)) < 1e-9
    assert np.max(np.abs(g - g_ref + shift)) < 1e-9
    for r in torch_ranks:
        assert abs(r["value"] - float(out.cost.detach())) < 1e-10
        assert np.allclose(r["grad_y"], y.grad.numpy(), rtol=0, atol=1e-10)
    grad_x = np.concatenate([r["grad_x"] for r in torch_ranks])
    assert np.max(np.abs(grad_x - x.grad.numpy())) < 1e-10
    assert np.max(np.abs(x.grad.numpy())) > 1e-3


def test_torch_ddp_averages_softk_gradients(torch_ranks):
    import softk

    space: dict = {}
    exec(TORCH_DATA, space)
    net = space["model"]()
    halves = (slice(0, 2), slice(2, 4))  # the ranks' shares: the solver's stopping test is per call
    losses = [softk.sinkhorn_divergence(net(space["XB"][h]), space["YB"][h], epsilon=space["EPS"]).mean() for h in halves]
    (0.5 * (losses[0] + losses[1])).backward()
    for r in torch_ranks:  # every rank holds the average over the ranks: the whole batch's gradient
        assert np.allclose(r["grad_w"], net.weight.grad.numpy(), rtol=0, atol=1e-10)
        assert np.allclose(r["grad_b"], net.bias.grad.numpy(), rtol=0, atol=1e-10)
    assert np.max(np.abs(net.weight.grad.numpy())) > 1e-3
