"""Portable parameters: Keras layers <-> canonical {name: (in, out) array}."""

import keras
import numpy as np

from d2lattn import _checks


def _layers(module, path=""):
    """(dotted path, layer) for `module` and every layer in its public attributes, in order."""
    yield path, module
    for name, value in vars(module).items():
        if isinstance(value, keras.layers.Layer) and not name.startswith("_"):
            yield from _layers(value, f"{path}.{name}" if path else name)


def _named(module):
    """{canonical name: variable}.

    A Dense kernel is already (in, out): canonical `W_x` is the kernel as it is,
    and the bias of `W_x` is `b_x`. A layer's own weights, made with `add_weight`
    (LayerNorm's gamma and beta), keep their attribute names: `norm.gamma`.
    """
    named = {}
    for path, sub in _layers(module):
        if isinstance(sub, keras.layers.Dense):
            named[path] = sub.kernel
            if sub.bias is not None:
                head, _, leaf = path.rpartition(".")
                named[f"{head}.b{leaf[1:]}" if head else f"b{leaf[1:]}"] = sub.bias
        else:
            prefix = f"{path}." if path else ""
            named.update({prefix + name: v for name, v in vars(sub).items()
                          if isinstance(v, keras.Variable) and not name.startswith("_")})
    return named


def get_params(module):
    return {name: np.array(v.numpy()) for name, v in _named(module).items()}


def set_params(module, params):
    named = _named(module)
    _checks.param_shapes({name: tuple(v.shape) for name, v in named.items()}, params)
    for name, v in named.items():
        v.assign(np.asarray(params[name], dtype=v.dtype))
