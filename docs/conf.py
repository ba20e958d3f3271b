"""Sphinx configuration of the ase-mlipal documentation.

Build (warnings are errors, as in CI through ``tests/test_docs.py``)::

    pip install ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The benchmark figures are not copied into ``docs/``: the pages point at
``benchmarks/results/*.png`` by relative path and Sphinx copies them into
the build, so regenerating a figure with its benchmark script updates the
next build without a manual step.
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# the package from this checkout, installed or not
sys.path.insert(0, ROOT)
# importing the package imports torch: keep the documentation build to one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase_mlipal  # noqa: E402

project = "ase-mlipal"
author = "ase-mlipal contributors"
copyright = "ase-mlipal contributors"
version = release = ase_mlipal.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []

# -- autodoc --------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"

# -- napoleon: the docstrings are Google style ----------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Unresolved cross-references are not errors: the API is documented through
# the package's re-exports (``ase_mlipal.X``), while docstrings also name
# private helpers and submodule paths, and third-party types (numpy, torch,
# ase) would need intersphinx inventories, which need the network.
nitpicky = False


def _drop_type_docstring(app, what, name, obj, options, lines):
    """A module-level container has no docstring of its own.

    autodoc falls back on its type's (``dict``'s for ``FEATURE_MAPS``), which
    documents the builtin, not the object, and is not valid reST. The
    directive's own content describes the object instead.
    """
    if what != "data":
        return
    type_doc = getattr(type(obj), "__doc__", None)
    if type_doc and getattr(obj, "__doc__", None) == type_doc:
        lines.clear()


def _check_api_complete(app, env):
    """Warn (an error under -W) for a public name the API reference lacks."""
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    for name in ase_mlipal.__all__:
        if f"ase_mlipal.{name}" not in documented:
            logging.getLogger(__name__).warning(
                "ase_mlipal.%s is in ase_mlipal.__all__ but not in docs/api.rst", name,
                type="mlipal", subtype="api",
            )


def setup(app):
    app.connect("autodoc-process-docstring", _drop_type_docstring)
    app.connect("env-check-consistency", _check_api_complete)
