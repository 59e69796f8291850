"""Sphinx configuration of the book: `sphinx-build -c book build/book build/html` after book/merge.py.

Everything the site loads ships with it: the theme (furo), sphinx-design's tabs, and MathJax 3
from the django-static-mathjax package (MathJax's own files, no Django needed), so the site
works with no network and the build downloads nothing.
"""

import pathlib

import mathjax

project = "d2lattn"
author = "the d2lattn authors"
copyright = "the d2lattn authors"
extensions = ["myst_parser", "sphinx_design"]
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
exclude_patterns = ["_extra"]
suppress_warnings = ["myst.header"]  # chapters number their own headings from "# 1." on

html_theme = "furo"
html_title = "d2lattn: attention, on the framework you use"
html_static_path = ["_static", str(pathlib.Path(mathjax.__file__).parent / "static/mathjax/es5/tex-svg-full.js")]
html_css_files = ["book.css"]
html_extra_path = ["../build/book/_extra"]  # figures, notebooks and MyST sources written by merge.py
html_copy_source = False  # the MyST sources are linked from each page instead
html_show_sourcelink = False
mathjax_path = "tex-svg-full.js"  # from _static: every TeX extension in one file, fonts as SVG paths
