"""The NumPy reference backend: float64, forward only, the oracle every backend is tested against."""

from d2lattn import _backend

BACKEND = "numpy"
with _backend.requires("numpy"):
    __all__ = _backend.export(globals())
