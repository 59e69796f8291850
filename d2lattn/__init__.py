"""d2lattn: attention mechanisms, one API on every framework.

    import d2lattn as d2l            # the backend named by $D2LATTN_BACKEND (default torch)
    from d2lattn import jax as d2l   # a backend by name, whatever the variable says

The selected backend is read from $D2LATTN_BACKEND once, on first use, and only
that backend's framework is imported.
"""

from d2lattn import _backend, api

__version__ = "0.1.0"
_selected = None


def _api():
    global _selected
    if _selected is None:
        _selected = _backend.load(_backend.selected())
    return _selected


def __getattr__(name):
    if name in _backend.BACKENDS:  # `from d2lattn import jax` imports the submodule
        return _backend.load(name)
    if name in api.__all__:  # the contract: forwarded to the selected backend
        return getattr(_api(), name)
    raise AttributeError(f"module 'd2lattn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(api.__all__))
