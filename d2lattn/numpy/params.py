"""A minimal module base and portable parameters for the NumPy reference."""

import numpy as np

from d2lattn import _checks, checkpoint


class Module:
    """Parameters in `self.params` (canonical names), child modules as attributes.

    Canonical names are the ones every backend uses: a dense map's weight is named
    by its attribute (`W_out`, with bias `b_out`), and so is an embedding table
    (`embedding`, (vocab, embed)); a GRU's layers are children `l0`, `l1`, ...; a list
    of child modules (`blocks`) names them `blocks.0`, `blocks.1`, ....

    The reference is forward-only and deterministic: it runs in evaluation
    mode and refuses to apply dropout.
    """

    def __init__(self):
        self.params = {}

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def dropout(self, X, rate, training):
        if training and rate > 0:
            raise ValueError(
                "training: the NumPy reference is forward-only and deterministic, so it "
                "cannot apply dropout; call it with training=False (or None)"
            )
        return X

    def children(self):
        found = {}
        for name, value in vars(self).items():
            if isinstance(value, Module):
                found[name] = value
            elif isinstance(value, list) and value and all(isinstance(v, Module) for v in value):
                found.update({f"{name}.{i}": child for i, child in enumerate(value)})
        return found


def _named(module, prefix=""):
    """{dotted canonical name: array} for `module` and its children, in order."""
    named = {prefix + name: value for name, value in module.params.items()}
    for name, child in module.children().items():
        named.update(_named(child, f"{prefix}{name}."))
    return named


def get_params(module):
    return {name: np.array(value) for name, value in _named(module).items()}


def set_params(module, params):
    _checks.check_param_shapes({n: v.shape for n, v in _named(module).items()}, params)
    for name, value in params.items():
        *path, leaf = name.split(".")
        owner = module
        for step in path:
            owner = owner[int(step)] if isinstance(owner, list) else getattr(owner, step)
        owner.params[leaf] = np.array(value, dtype=np.float64)


def save_params(module, path):
    checkpoint.save(get_params(module), path)


def load_params(module, path):
    set_params(module, checkpoint.load(path))
