"""Sphinx configuration for the softk documentation.

Build from the repository root with::

    python -m sphinx -W -b html docs docs/_build/html
"""

import softk

project = "softk"
author = "the softk developers"
copyright = "softk developers"
release = softk.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: $...$ and $$...$$ math, ::: fences, definition lists, heading anchors.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# numpy-style docstrings, as written in softk.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings already say what each argument is

html_theme = "alabaster"
html_title = f"softk {release}"
