"""Notebook helpers, the same for every backend: show the code behind a component, check shapes."""

import ast
import inspect
import pathlib

from d2lattn import _backend

PACKAGE = pathlib.Path(__file__).resolve().parent


def _display(markdown, fallback):
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(markdown))
    else:
        print(fallback)


def show_source(obj):
    """Show the source of a d2lattn function or class of the active backend, with its file."""
    source = inspect.getsource(obj)
    where = pathlib.Path(inspect.getsourcefile(obj)).resolve().relative_to(PACKAGE.parent).as_posix()
    _display(f"`{where}`\n\n```python\n{source}```", f"# {where}\n{source}")
    return source


def sources(name, backends=_backend.BACKENDS):
    """{backend: source of its `name`} read from the files, without importing any framework."""
    found = {}
    for backend in backends:
        for path in sorted((PACKAGE / backend).glob("*.py")):
            text = path.read_text()
            for node in ast.parse(text).body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
                    found[backend] = ast.get_source_segment(text, node)
    return found


def show_sources(name, backends=_backend.FRAMEWORK_BACKENDS):
    """Show `name` as every backend writes it, one after another, read from the source files."""
    found = sources(name, backends)
    _display("\n\n".join(f"**{b}**\n\n```python\n{src}\n```" for b, src in found.items()),
             "\n\n".join(f"# --- {b}\n{src}" for b, src in found.items()))
    return found


def check_shape(x, shape):
    """Fail loudly if `x` (any backend's array) does not have `shape`."""
    got = tuple(x.shape)
    if got != tuple(shape):
        raise AssertionError(f"expected shape {tuple(shape)}, got {got}")
    return x
