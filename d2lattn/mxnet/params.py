"""Portable parameters: Gluon blocks <-> canonical {name: (in, out) array}."""

from mxnet import np
from mxnet.gluon import nn

from d2lattn import _checks


def _same(x):
    return x


def _transpose(x):
    return x.T


def _blocks(block, path=""):
    """(dotted path, block) for `block` and every block inside it, parents first."""
    yield path, block
    for name, child in block._children.items():
        yield from _blocks(child, f"{path}.{name}" if path else name)


def _named(module):
    """{canonical name: (parameter, layout)}; `layout` maps stored <-> canonical (its own inverse).

    Gluon's Dense keeps its weight as (out, in): canonical `W_x` is its transpose,
    and the bias of `W_x` is `b_x`. Other trainable parameters keep their names;
    Constants (the positional codes) are not parameters.
    """
    named = {}
    for path, sub in _blocks(module):
        if isinstance(sub, nn.Dense):
            named[path] = (sub.weight, _transpose)
            if sub.bias is not None:
                head, _, leaf = path.rpartition(".")
                named[f"{head}.b{leaf[1:]}" if head else f"b{leaf[1:]}"] = (sub.bias, _same)
        else:
            prefix = f"{path}." if path else ""
            named.update({prefix + n: (p, _same) for n, p in sub._reg_params.items() if p.grad_req != "null"})
    return named


def get_params(module):
    return {name: layout(p.data()).asnumpy() for name, (p, layout) in _named(module).items()}


def set_params(module, params):
    named = _named(module)
    _checks.param_shapes({name: tuple(layout(p.data()).shape) for name, (p, layout) in named.items()}, params)
    for name, (p, layout) in named.items():
        p.set_data(layout(np.array(params[name], dtype=p.dtype)))
