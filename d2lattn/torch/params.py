"""Portable parameters: torch.nn modules <-> canonical {name: (in, out) array}."""

import numpy as np
import torch
from torch import nn

from d2lattn import _checks


def _same(x):
    return x


def _named(module):
    """{canonical name: (parameter, layout)}; `layout` maps stored <-> canonical (its own inverse).

    nn.Linear keeps its weight as (out, in): canonical `W_x` is its transpose,
    and the bias of `W_x` is `b_x`. Other parameters keep their names.
    """
    named = {}
    for path, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            named[path] = (sub.weight, torch.t)
            if sub.bias is not None:
                head, _, leaf = path.rpartition(".")
                named[f"{head}.b{leaf[1:]}" if head else f"b{leaf[1:]}"] = (sub.bias, _same)
        else:
            prefix = f"{path}." if path else ""
            named.update({prefix + n: (p, _same) for n, p in sub.named_parameters(recurse=False)})
    return named


def get_params(module):
    return {name: layout(p).detach().cpu().numpy().copy() for name, (p, layout) in _named(module).items()}


def set_params(module, params):
    named = _named(module)
    _checks.param_shapes({name: tuple(layout(p).shape) for name, (p, layout) in named.items()}, params)
    with torch.no_grad():
        for name, (p, layout) in named.items():
            p.copy_(layout(torch.as_tensor(np.asarray(params[name]), dtype=p.dtype)))
