"""``softk demo`` tours every operator on every installed backend and writes its figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from softk.demo import run
from softk.demo.cases import CASES

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_public_operator_is_in_the_tour():
    import softk

    covered = {case.name for case in CASES} | {"sinkhorn"}  # sinkhorn_cost is sinkhorn(...).cost
    operators = {name for name in softk.__all__ if name.startswith(("soft_", "sinkhorn", "beam"))}
    assert operators <= covered, operators - covered


def test_numpy_backends_agree_and_gradients_pass():
    rows = run(out=None, repeats=1, only="soft_topk$|sinkhorn_plan|beam_search")
    assert {r["operator"] for r in rows} == {"soft_topk", "sinkhorn_plan", "beam_search"}
    assert "numpy" in {r["backend"] for r in rows}
    assert all(r["ok"] for r in rows), rows
    checked = [r for r in rows if r["grad_err"] is not None]
    assert checked and all(r["grad_err"] < 1e-5 for r in checked)


def test_demo_command_writes_its_figures(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figures"
    result = subprocess.run(
        [sys.executable, "-m", "softk", "demo", "--only", "soft_rank", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soft_rank" in result.stdout and "pass" in result.stdout and "FAIL" not in result.stdout
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["beam_search.png", "ot_plans.png", "soft_topk.png", "sorting.png"]
    assert all(p.read_bytes()[:8] == PNG for p in pngs)


def test_cli_usage(tmp_path):
    result = subprocess.run([sys.executable, "-m", "softk"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "usage: softk demo" in result.stdout
