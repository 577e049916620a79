"""Sphinx configuration for the softk documentation.

Build from the repository root with::

    python -m sphinx -W -b html docs docs/_build/html

The gallery (``docs/gallery_src/plot_*.py``) is run by sphinx-gallery and
written to ``docs/gallery/``. Set ``SOFTK_GALLERY_SMALL=1`` to run the
examples at small sizes (as the test suite does), or build with
``-D plot_gallery=0`` to skip running them.
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
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "gallery_src"]

# MyST: $...$ and $$...$$ math, ::: fences, definition lists, heading anchors.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# numpy-style docstrings, as written in softk.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings already say what each argument is

# The gallery: every docs/gallery_src/plot_*.py is run and rendered with its figures.
# An example that raises fails the build; so does any warning under -W.
sphinx_gallery_conf = {
    "examples_dirs": "gallery_src",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "write_computation_times": False,
    "remove_config_comments": True,
    "min_reported_time": 1e9,  # no run times in the pages: they depend on the machine
    "show_memory": False,
    "show_signature": False,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
}

html_theme = "alabaster"
html_title = f"softk {release}"
