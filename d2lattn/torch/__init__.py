"""The PyTorch backend: torch.nn modules, autograd, `module.training` as the mode."""

from d2lattn import _backend

BACKEND = "torch"
with _backend.requires("torch"):
    __all__ = _backend.export(globals())
