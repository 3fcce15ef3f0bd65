"""Sphinx configuration of torchstn's reference pages (built offline, warnings are errors).

Build: ``pip install -e '.[docs]'`` then ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import torchstn  # noqa: E402  (the installed package: the reference documents what users import)

project = "torchstn"
author = "the torchstn authors"
copyright = "the torchstn authors"  # noqa: A001  (Sphinx's name)
version = release = torchstn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.mathjax",  # math blocks; the script is loaded by the reader's browser, nothing at build time
    "sphinx.ext.viewcode",
    "torchstn_docs",  # alias resolution, the public-name tables, the model registry, the gallery
]
# No intersphinx: CI has no network but the package registries, so no inventories of
# torch, numpy or Python can be downloaded. References to other projects are therefore
# not checked (see torchstn_docs.EXTERNAL); every reference to torchstn is.
nitpicky = True
from torchstn_docs import BARE_EXTERNAL_RE, EXTERNAL_RE, PRIVATE_RE  # noqa: E402

nitpick_ignore_regex = [(r"py:.*", EXTERNAL_RE), (r"py:.*", BARE_EXTERNAL_RE), (r"py:.*", PRIVATE_RE)]

exclude_patterns = ["_build", "*.md", "figures"]  # the guides (*.md) are read on the repository
root_doc = "index"
templates_path: list[str] = []

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "groupwise"
autodoc_typehints = "description"  # types in the parameter lists, signatures stay readable
autodoc_typehints_format = "short"
autoclass_content = "class"  # the class docstring has the Args (not nn.Module.__init__'s)
autodoc_inherit_docstrings = False  # no `extra_repr`/`forward` entries carrying torch's own words

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
napoleon_custom_sections = ["Convention"]  # the STYLE guide's paragraph on coordinates, rendered as a section

html_theme = "alabaster"
html_title = f"torchstn {release}"
html_static_path: list[str] = []
html_theme_options = {  # wide enough for the 120-character lines of the examples
    "description": "Spatial transformer networks for PyTorch",
    "sidebar_width": "240px",
    "page_width": "1360px",
    "body_max_width": "none",
}
