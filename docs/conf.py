"""Sphinx configuration for the sctranslator documentation site.

Built with ``make docs`` (warnings are errors). Pages are MyST Markdown; tutorials are MyST-NB text
notebooks executed at build time on the bundled demo data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Our own build-time extension: the CLI reference and the module map, generated from the code.
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
# The tutorials' kernels, and the commands they run, import this checkout's package too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))

project = "sctranslator"
author = "the sctranslator developers"
copyright = "2026, the sctranslator developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "reference_pages",
]

# One docstring style across the package: numpydoc sections, parsed by napoleon.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autosummary_generate = True
templates_path = ["api/_templates"]  # the API reference's class page: members and bases
autodoc_typehints = "description"
autodoc_member_order = "bysource"

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
# Flags in prose stay as typed: no "--name" turned into an en dash, no curly quotes in option values.
smartquotes = False

# Tutorials run on every build, so what they show is what the code does today.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# _generated/ holds the pages reference_pages writes; they are included by cli.md and architecture.md.
exclude_patterns = ["_build", "jupyter_execute", "_generated", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = "sctranslator"
html_theme_options = {"show_toc_level": 2}
