"""The main job: ``softk demo`` runs on every installed backend and writes its picture."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_demo_runs_and_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, "-m", "softk", "demo", "--n", "200", "--repeats", "1", "--plot", str(png)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "numpy" in result.stdout and "pass" in result.stdout and "FAIL" not in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_usage(tmp_path):
    result = subprocess.run([sys.executable, "-m", "softk"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "usage: softk demo" in result.stdout
