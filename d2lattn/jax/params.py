"""Portable parameters: flax.nnx modules <-> canonical {name: (in, out) array}."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from d2lattn import _checks, checkpoint


def _named(module):
    """{canonical name: path of the nnx.Param in the module's state}.

    nnx.Linear keeps its kernel as (in, out) already: canonical `W_x` is the
    kernel of the Linear `W_x`, and `b_x` its bias. An nnx.Embed's table
    (vocab, features) is named by the module, like a dense map: `embedding`,
    `encoder.embedding`. Other Params keep their names (the GRU's `l0.b_r`).
    """
    kinds = {path: type(sub) for path, sub in nnx.iter_modules(module)}
    named = {}
    for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        *owner, leaf = path
        kind = kinds.get(tuple(owner))
        if kind is not None and issubclass(kind, nnx.Linear):
            *owner, layer = owner
            leaf = layer if leaf == "kernel" else f"b{layer[1:]}"
        elif kind is not None and issubclass(kind, nnx.Embed):
            *owner, leaf = owner
        named[".".join(map(str, (*owner, leaf)))] = path
    return named


def _params(module):
    """{canonical name: nnx.Param}, the module's own variables."""
    params = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    return {name: params[path] for name, path in _named(module).items()}


def get_params(module):
    return {name: np.array(p[...]) for name, p in _params(module).items()}


def set_params(module, params):
    named = _params(module)
    _checks.check_param_shapes({name: p.shape for name, p in named.items()}, params)
    for name, p in named.items():
        p[...] = jnp.asarray(np.asarray(params[name]), dtype=p.dtype)


def save_params(module, path):
    checkpoint.save(get_params(module), path)


def load_params(module, path):
    set_params(module, checkpoint.load(path))
