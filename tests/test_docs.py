"""The examples in the docstrings and in docs/*.md run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pathlib
import re
import warnings

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
MODULES = [
    "softk", "softk._op", "softk._xp", "softk._threshold", "softk.topk", "softk._ot.newton", "softk.sorting",
    "softk.sorting_topk", "softk.ot", "softk._ot.kernel", "softk._ot.online", "softk._ot.blocks", "softk._ot.costs",
    "softk._ot.dense", "softk._ot.plan", "softk._ot.schedule", "softk._ot.symmetric", "softk.transfer", "softk.enot", "softk.gaussian_ot",
    "softk.sparse_ot", "softk.sparse_projection", "softk.sparse_repair", "softk.moe", "softk.backends.torch_moe", "softk._ot.solved",
    "softk.enot_losses", "softk.enot_conjugate", "softk.enot_data",
    "softk.topp", "softk.beam", "softk.backends.torch_layers", "softk.backends.jax_layers",
]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) or ["none"])
def test_docs_page_examples(page):
    if page == "none":
        pytest.skip("docs/ not present")
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    blocks = re.findall(r"^```pycon\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)
    if not blocks:
        pytest.skip(f"{page} has no examples")
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {"__name__": page}, page, str(DOCS / page), 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.compile's graph-break chatter
        result = runner.run(test)
    assert result.failed == 0
