"""Portable parameters: torch.nn modules <-> canonical {name: (in, out) array}."""

import numpy as np
import torch
from torch import nn

from d2lattn import _checks, checkpoint


class _Layout:
    """Where one canonical parameter sits in a stored tensor `p`.

    It is rows `rows` of `p` (all of them by default), transposed when `p` is an
    nn.Linear weight (out, in). `partner`: for the r and z gates of nn.GRU, whose
    canonical bias b_r is b_ir + b_hr, the tensor holding the second half.

    Calling a layout maps `p`, or the gradient of `p`, to the canonical array:
    the objective sees b_ir and b_hr only through their sum, so the gradient of
    b_r is the gradient of b_ir. `get` and `set` read and write the value.
    """

    def __init__(self, rows=slice(None), transpose=False, partner=None):
        self.rows, self.transpose, self.partner = rows, transpose, partner

    def __call__(self, t):
        t = t[self.rows]
        return t.t() if self.transpose else t

    def get(self, p):
        return self(p) if self.partner is None else self(p) + self(self.partner)

    def set(self, p, value):
        """Write the canonical `value`; a partner takes zeros (b_ir = b_r, b_hr = 0)."""
        p[self.rows] = value.t() if self.transpose else value
        if self.partner is not None:
            self.partner[self.rows] = 0

    def placed(self, value):
        """The stored tensor that is the canonical `value` (a whole parameter: not a GRU's gate)."""
        return value.t() if self.transpose else value


def _gru(prefix, gru):
    """nn.GRU stacks each layer's gates in PyTorch's order (r, z, n): weight_ih_l{i} (3h, in),
    weight_hh_l{i} (3h, h), bias_ih_l{i} and bias_hh_l{i} (3h,). Canonical, per layer `l{i}.`:
    W_xr, W_xz, W_xh (in, h); W_hr, W_hz, W_hh (h, h); b_r = b_ir + b_hr, b_z = b_iz + b_hz,
    b_xh = b_in, b_hh = b_hn."""
    if gru.bidirectional or not gru.bias or gru.proj_size:
        raise ValueError("canonical GRU parameters cover a one-directional nn.GRU with biases and no projection")
    h, named = gru.hidden_size, {}
    rows = {"r": slice(0, h), "z": slice(h, 2 * h), "h": slice(2 * h, 3 * h)}
    for i in range(gru.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(gru, f"{n}_l{i}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        layer = f"{prefix}l{i}."
        named.update({f"{layer}W_x{g}": (w_ih, _Layout(r, transpose=True)) for g, r in rows.items()})
        named.update({f"{layer}W_h{g}": (w_hh, _Layout(r, transpose=True)) for g, r in rows.items()})
        named.update({f"{layer}b_{g}": (b_ih, _Layout(rows[g], partner=b_hh)) for g in "rz"})
        named.update({f"{layer}b_xh": (b_ih, _Layout(rows["h"])), f"{layer}b_hh": (b_hh, _Layout(rows["h"]))})
    return named


def _named(module):
    """{canonical name: (parameter, _Layout)}.

    nn.Linear keeps its weight as (out, in): canonical `W_x` is its transpose,
    and the bias of `W_x` is `b_x`. An nn.Embedding's table (vocab, embed) is
    named by the module, like a dense map: `embedding`, `encoder.embedding`.
    nn.GRU maps to `l{i}.W_xr` ... (see `_gru`). Other parameters keep their names.
    """
    named = {}
    for path, sub in module.named_modules():  # an nn.ModuleList's children are `blocks.0`, `blocks.1`, ...
        prefix = f"{path}." if path else ""
        if isinstance(sub, nn.Linear):
            named[path] = (sub.weight, _Layout(transpose=True))
            if sub.bias is not None:
                head, _, leaf = path.rpartition(".")
                named[f"{head}.b{leaf[1:]}" if head else f"b{leaf[1:]}"] = (sub.bias, _Layout())
        elif isinstance(sub, nn.Embedding):
            named[path] = (sub.weight, _Layout())
        elif isinstance(sub, nn.GRU):
            named.update(_gru(prefix, sub))
        else:
            named.update({prefix + n: (p, _Layout()) for n, p in sub.named_parameters(recurse=False)})
    return named


def get_params(module):
    return {name: layout.get(p).detach().cpu().numpy().copy() for name, (p, layout) in _named(module).items()}


def set_params(module, params):
    """Copies into the module's parameters; a parameter on the meta device (a module built under
    `torch.device("meta")`, which draws no initial weights) becomes the given array itself, shared, not
    copied: from_pretrained builds its model so."""
    named = _named(module)
    _checks.check_param_shapes({name: tuple(layout(p).shape) for name, (p, layout) in named.items()}, params)
    owners = {id(p): (sub, attr) for sub in module.modules() for attr, p in sub.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, (p, layout) in named.items():
            value = torch.as_tensor(np.asarray(params[name]), dtype=p.dtype)
            if p.is_meta and layout.rows == slice(None) and layout.partner is None:
                sub, attr = owners[id(p)]
                setattr(sub, attr, nn.Parameter(layout.placed(value), requires_grad=p.requires_grad))
            else:
                layout.set(p, value)


def save_params(module, path):
    checkpoint.save(get_params(module), path)


def load_params(module, path):
    set_params(module, checkpoint.load(path))
