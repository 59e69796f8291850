"""The MXNet backend: hybridizable Gluon blocks on the NumPy interface, autograd,
`autograd.is_training()` as the mode.

Importing it switches MXNet to its NumPy interface (`npx.set_np()`): arrays are
`mxnet.np.ndarray`s with NumPy semantics, which every block here expects.
"""

from d2lattn import _backend

BACKEND = "mxnet"

with _backend.requires("mxnet"):
    from mxnet import npx

    __all__ = _backend.export(globals())
    npx.set_np()

