"""The documentation, gallery included, builds with warnings as errors.

The gallery scripts (``docs/gallery_src/plot_*.py``) run at small sizes
(``SOFTK_GALLERY_SMALL=1``); the build works on a copy of ``docs/`` so that
nothing is written into the checkout.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_docs_and_gallery_build_without_warnings(tmp_path):
    for module in ("sphinx", "myst_parser", "sphinx_gallery", "matplotlib", "torch", "sklearn"):
        pytest.importorskip(module)
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "gallery", "__pycache__"))
    env = dict(os.environ, SOFTK_GALLERY_SMALL="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(src), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    html = tmp_path / "html"
    examples = sorted(p.stem for p in (DOCS / "gallery_src").glob("plot_*.py"))
    assert examples
    for name in examples:
        page = (html / "gallery" / f"{name}.html").read_text()
        assert "sphx_glr_" in page and ".png" in page, f"{name}: no figure in the page"
    assert (html / "epsilon.html").exists() and (html / "gallery" / "index.html").exists()
