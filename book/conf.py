"""Sphinx configuration of the book: `sphinx-build -c book build/book build/html` after book/merge.py.

Everything the site loads ships with it: the theme (furo), sphinx-design's tabs, and MathJax 3
from the django-static-mathjax package (MathJax's own files, no Django needed), so the site
works with no network and the build downloads nothing. The chapters cite with MyST's
{cite:p}`key` (parenthetical) and {cite:t}`key` (textual), resolved by sphinxcontrib-bibtex
from book/references.bib; the API page is autodoc's reading of d2lattn/api.py, which imports
no framework.
"""

import dataclasses
import pathlib
import re
import sys

import mathjax
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # d2lattn.api, for autodoc


@dataclasses.dataclass
class RoundAuthorYear(AuthorYearReferenceStyle):
    """(Vaswani et al., 2017) and Vaswani et al. (2017), as d2l.ai cites."""

    bracket_parenthetical: BracketStyle = dataclasses.field(default_factory=lambda: BracketStyle("(", ")"))
    bracket_textual: BracketStyle = dataclasses.field(default_factory=lambda: BracketStyle("(", ")"))


register_plugin("sphinxcontrib.bibtex.style.referencing", "round_author_year", RoundAuthorYear)

project = "d2lattn"
author = "the d2lattn authors"
copyright = "the d2lattn authors"
extensions = ["myst_parser", "sphinx_design", "sphinx.ext.autodoc", "sphinxcontrib.bibtex"]
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
exclude_patterns = ["_extra"]
suppress_warnings = ["myst.header"]  # chapters number their own headings from "# 1." on
bibtex_bibfiles = ["references.bib"]  # next to this file
bibtex_reference_style = "round_author_year"
bibtex_default_style = "plain"  # the list: numbered, sorted by author
nitpicky = True  # a {py:obj} link from a chapter to a name the API page lacks fails the build
autodoc_member_order = "bysource"  # the contract's order: tensors, attention, blocks, ...
default_role = "code"  # `name` in the docstrings of d2lattn/api.py is code, as in Markdown

html_theme = "furo"
html_title = "d2lattn: attention, on the framework you use"
html_static_path = ["_static", str(pathlib.Path(mathjax.__file__).parent / "static/mathjax/es5/tex-svg-full.js")]
html_css_files = ["book.css"]
html_extra_path = ["../build/book/_extra"]  # figures, notebooks and MyST sources written by merge.py
html_copy_source = False  # the MyST sources are linked from each page instead
html_show_sourcelink = False
mathjax_path = "tex-svg-full.js"  # from _static: every TeX extension in one file, fonts as SVG paths


def plain_docstring(app, what, name, obj, options, lines):
    """d2lattn/api.py's docstrings are plain text with `code` in backticks: outside the backticks,
    characters that reST would read as markup (*, |, \\, a word's trailing _) stay characters."""
    for i, line in enumerate(lines):
        parts = re.split(r"(`[^`]*`)", line)
        lines[i] = "".join(part if part.startswith("`") else re.sub(r"([*|\\]|_(?!\w))", r"\\\1", part)
                           for part in parts)


def setup(app):
    app.connect("autodoc-process-docstring", plain_docstring)
