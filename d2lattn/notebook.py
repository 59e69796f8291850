"""Notebook helpers, the same for every backend: show the code behind a component, check shapes."""

import ast
import inspect
import pathlib

from d2lattn import _backend, api

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


def _segment(lines, node):
    """A top-level statement's lines, its decorators included."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return "\n".join(lines[start - 1:node.end_lineno])


def helpers(obj):
    """What `obj` uses from its own file besides the public names: the private classes,
    functions and constants its code refers to (and theirs), with the statements that
    complete them (a `defvjp`), in the file's order."""
    obj = inspect.unwrap(obj)                      # a decorated function: the file it is written in
    text = pathlib.Path(inspect.getsourcefile(obj)).read_text()
    body = [node for node in ast.parse(text).body if not isinstance(node, (ast.Import, ast.ImportFrom))]

    def defined(node):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            return {node.name}
        return {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}

    def used(node):
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    private = {name for node in body for name in defined(node)} - set(api.__all__)
    wanted, chosen = {obj.__name__}, set()
    while True:
        new = [i for i, node in enumerate(body) if i not in chosen and (
            defined(node) & wanted if defined(node) else used(node) & wanted - {obj.__name__})]
        if not new:
            break
        chosen.update(new)
        wanted |= {name for i in new for name in used(body[i]) & private}
    lines = text.splitlines()
    return [_segment(lines, body[i]) for i in sorted(chosen) if obj.__name__ not in defined(body[i])]


def show_source(obj):
    """Show the source of a d2lattn function or class of the active backend, with its file, and
    below it what it uses from that file that is not a public name (see `helpers`)."""
    obj = inspect.unwrap(obj)                      # torch.no_grad() and the like wrap the function
    source = inspect.getsource(obj)
    where = pathlib.Path(inspect.getsourcefile(obj)).resolve().relative_to(PACKAGE.parent).as_posix()
    used = "\n\n\n".join(helpers(obj))
    markdown = f"`{where}`\n\n```python\n{source}```"
    text = f"# {where}\n{source}"
    if used:
        markdown += f"\n\nwith, from the same file:\n\n```python\n{used}\n```"
        text += f"\n# with, from the same file:\n{used}\n"
    _display(markdown, text)
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
