"""Canonical parameters in a .safetensors file, backend-free (the safetensors package's NumPy API).

Every backend's `save_params` / `load_params` go through here, so a file written by one
framework loads into any other: the names are get_params' canonical names, the arrays float32.
"""

import pathlib

import numpy as np
from safetensors.numpy import load_file, save_file


def save(params, path):
    """Write {canonical name: array} to `path` as float32 (the dtype every backend computes in)."""
    path = pathlib.Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(path)!r}")
    save_file({name: np.ascontiguousarray(value, dtype=np.float32) for name, value in params.items()},
              str(path), metadata={"format": "d2lattn canonical parameters"})


def load(path):
    """{canonical name: float32 array} from a file written by `save` (in any backend)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file {str(path)!r}")
    return load_file(str(path))
