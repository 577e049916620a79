"""Type checks (mypy, configured in pyproject.toml) of the core package and its public API.

``softk`` ships ``py.typed``, so its annotations are part of its interface:
mypy must accept the package, and a client calling every public operator
with ordinary arguments.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

CLIENT = '''
import numpy as np
import softk

x = np.zeros((2, 5))
a = softk.soft_topk(x, 2, epsilon=0.1, largest=False, axis=-1, method="exact")
b = softk.soft_topk_sorted(x, 2, epsilon=0.01)
c = softk.soft_sort(x, epsilon=0.01, descending=True)
d = softk.soft_rank(x, epsilon=0.01, m=5)
e = softk.soft_quantile(x, [0.25, 0.75], epsilon=0.01)
out: softk.SinkhornOutput = softk.sinkhorn(x=x, y=x, epsilon=0.1, tol=1e-6, online=False)
f = softk.sinkhorn_cost(x=x, y=x, epsilon=0.1)
g = softk.sinkhorn_plan(x=x, y=x, epsilon=0.1)
h = softk.sinkhorn_apply(x=x, y=x, v=x, epsilon=0.1)
s = softk.sinkhorn_divergence(x, x, epsilon=0.1)
value, pullback = softk.vjp(softk.soft_topk, x, 2)
version: str = softk.__version__
'''


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One mypy cache for both checks (none in the checkout)."""
    return str(tmp_path_factory.mktemp("mypy_cache"))


def _mypy(cache: str, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", cache, *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def test_package_type_checks(cache):
    pytest.importorskip("mypy")
    result = _mypy(cache, "--config-file", str(ROOT / "pyproject.toml"), cwd=ROOT)  # files = ["softk"]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_public_api_type_checks_for_a_client(cache, tmp_path):
    pytest.importorskip("mypy")
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    result = _mypy(cache, "--follow-imports=silent", "--ignore-missing-imports", str(client), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert (ROOT / "softk" / "py.typed").exists()
