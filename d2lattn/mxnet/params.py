"""Portable parameters: Gluon blocks <-> canonical {name: (in, out) array}."""

import numpy as onp
from mxnet import np
from mxnet.gluon import nn, rnn

from d2lattn import _checks, checkpoint


class _Layout:
    """Where one canonical parameter sits in a stored Gluon parameter `p`.

    It is rows `rows` of `p` (all of them by default), transposed when `p` is a
    Dense or GRU weight (out, in). `partner`: for the r and z gates of
    rnn.GRU, whose canonical bias b_r is b_ir + b_hr, the parameter holding
    the second half.

    Calling a layout maps the stored array, or its gradient, to the canonical
    array: the objective sees b_ir and b_hr only through their sum, so the
    gradient of b_r is the gradient of b_ir. `get` reads the value, `set`
    writes it into NumPy copies of the stored arrays.
    """

    def __init__(self, rows=slice(None), transpose=False, partner=None):
        self.rows, self.transpose, self.partner = rows, transpose, partner

    def __call__(self, x):
        x = x[self.rows]
        return x.T if self.transpose else x

    def get(self, p):
        return self(p.data()) if self.partner is None else self(p.data()) + self(self.partner.data())

    def set(self, staged, p, value):
        """Write the canonical `value` into `staged[p]`; a partner takes zeros (b_ir = b_r, b_hr = 0)."""
        staged[p][self.rows] = value.T if self.transpose else value
        if self.partner is not None:
            staged[self.partner][self.rows] = 0


def _submodules(block, path=""):
    """(dotted path, block) for `block` and every block inside it, parents first."""
    yield path, block
    for name, child in block._children.items():
        yield from _submodules(child, f"{path}.{name}" if path else name)


def _gru(prefix, gru):
    """A one-layer rnn.GRU (a layer `l{i}` of our GRU) stacks its gates in the order (r, z, n):
    l0_i2h_weight (3h, in), l0_h2h_weight (3h, h), l0_i2h_bias and l0_h2h_bias (3h,).
    Canonical, named by the block: W_xr, W_xz, W_xh (in, h); W_hr, W_hz, W_hh (h, h);
    b_r = b_ir + b_hr, b_z = b_iz + b_hz, b_xh = b_in, b_hh = b_hn."""
    if gru._num_layers != 1 or gru._dir != 1 or gru._projection_size:
        raise ValueError("canonical GRU parameters cover one-layer, one-directional rnn.GRUs with no projection")
    h, p = gru._hidden_size, gru._reg_params
    w_ih, w_hh, b_ih, b_hh = p["l0_i2h_weight"], p["l0_h2h_weight"], p["l0_i2h_bias"], p["l0_h2h_bias"]
    rows = {"r": slice(0, h), "z": slice(h, 2 * h), "h": slice(2 * h, 3 * h)}
    named = {f"{prefix}W_x{g}": (w_ih, _Layout(r, transpose=True)) for g, r in rows.items()}
    named.update({f"{prefix}W_h{g}": (w_hh, _Layout(r, transpose=True)) for g, r in rows.items()})
    named.update({f"{prefix}b_{g}": (b_ih, _Layout(rows[g], partner=b_hh)) for g in "rz"})
    named.update({f"{prefix}b_xh": (b_ih, _Layout(rows["h"])), f"{prefix}b_hh": (b_hh, _Layout(rows["h"]))})
    return named


def _named(module):
    """{canonical name: (parameter, _Layout)}.

    Gluon's Dense keeps its weight as (out, in): canonical `W_x` is its transpose,
    and the bias of `W_x` is `b_x`. An Embedding's table (vocab, embed) is named
    by the block, like a dense map: `embedding`, `encoder.embedding`. So are the
    one-layer rnn.GRUs of our GRU: `l0.W_xr`, `l1.W_xr` ... (see `_gru`). A Dense sharing an
    embedding's table (a tied head) is named once, by the embedding. A HybridSequential's
    children are named by their index: `blocks.0.attention.W_q`. Other trainable parameters keep their names;
    Constants (the positional codes) are not parameters.
    """
    named = {}
    for path, sub in _submodules(module):
        prefix = f"{path}." if path else ""
        if isinstance(sub, nn.Dense) and any(sub.weight is p for p, _ in named.values()):
            continue                                                    # a tied head: named by its embedding
        if isinstance(sub, nn.Dense):
            named[path] = (sub.weight, _Layout(transpose=True))
            if sub.bias is not None:
                head, _, leaf = path.rpartition(".")
                named[f"{head}.b{leaf[1:]}" if head else f"b{leaf[1:]}"] = (sub.bias, _Layout())
        elif isinstance(sub, nn.Embedding):
            named[path] = (sub.weight, _Layout())
        elif isinstance(sub, rnn.GRU):
            named.update(_gru(prefix, sub))
        else:
            named.update({prefix + n: (p, _Layout()) for n, p in sub._reg_params.items() if p.grad_req != "null"})
    return named


def get_params(module):
    return {name: layout.get(p).asnumpy() for name, (p, layout) in _named(module).items()}


def set_params(module, params):
    named = _named(module)
    _checks.check_param_shapes({name: tuple(layout(p.data()).shape) for name, (p, layout) in named.items()}, params)
    staged = {p: p.data().asnumpy() for p, _ in named.values()}      # a GRU weight holds several canonical ones
    for name, (p, layout) in named.items():
        layout.set(staged, p, onp.asarray(params[name]))
    for p, value in staged.items():
        p.set_data(np.array(value, dtype=p.dtype))


def save_params(module, path):
    checkpoint.save(get_params(module), path)


def load_params(module, path):
    set_params(module, checkpoint.load(path))
