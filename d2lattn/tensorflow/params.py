"""Portable parameters: Keras layers <-> canonical {name: (in, out) array}."""

import keras
import numpy as np

from d2lattn import _checks, checkpoint


class _Layout:
    """Where one canonical parameter sits in a stored variable `v`.

    It is `v[index]` (all of `v` by default). `partner`: for the r and z gates of
    keras.layers.GRU, whose canonical bias b_r is the input-side bias plus the
    recurrent-side one, the index of the second half in the same variable.

    Calling a layout maps `v`, or the gradient of `v`, to the canonical array:
    the objective sees the two biases only through their sum, so the gradient of
    b_r is the gradient of the input-side bias. `get` and `set` work on NumPy copies.
    """

    def __init__(self, index=..., partner=None):
        self.index, self.partner = index, partner

    def __call__(self, t):
        return t[self.index]

    def get(self, a):
        return self(a) if self.partner is None else self(a) + a[self.partner]

    def set(self, a, value):
        """Write the canonical `value` into the array `a`; a partner takes zeros."""
        a[self.index] = value
        if self.partner is not None:
            a[self.partner] = 0


def _submodules(module, path=""):
    """(dotted path, layer) for `module` and every layer in its public attributes, in order; a
    list of layers (`blocks`) names them `blocks.0`, `blocks.1`, .... A Keras RNN is a leaf:
    its cell's weights are named by `_gru`."""
    yield path, module
    if isinstance(module, keras.layers.RNN):
        return
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        children = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, child in children:
            if isinstance(child, keras.layers.Layer):
                child_name = name if i is None else f"{name}.{i}"
                yield from _submodules(child, f"{path}.{child_name}" if path else child_name)


def _gru(prefix, gru):
    """keras.layers.GRU keeps each layer's gates in Keras' order (z, r, h): kernel (in, 3h),
    recurrent_kernel (h, 3h) and, with reset_after=True, bias (2, 3h): the input-side row,
    then the recurrent-side one. Canonical, per layer `l{i}.`: W_xr, W_xz, W_xh (in, h);
    W_hr, W_hz, W_hh (h, h); b_r = b_ir + b_hr, b_z = b_iz + b_hz, b_xh = b_in, b_hh = b_hn."""
    cell = gru.cell
    if not (cell.reset_after and cell.use_bias) or gru.go_backwards:
        raise ValueError("canonical GRU parameters cover a forward keras.layers.GRU with reset_after=True and biases")
    h = cell.units
    cols = {"r": slice(h, 2 * h), "z": slice(0, h), "h": slice(2 * h, 3 * h)}
    named = {f"{prefix}W_x{g}": (cell.kernel, _Layout((slice(None), c))) for g, c in cols.items()}
    named.update({f"{prefix}W_h{g}": (cell.recurrent_kernel, _Layout((slice(None), c))) for g, c in cols.items()})
    named.update({f"{prefix}b_{g}": (cell.bias, _Layout((0, cols[g]), partner=(1, cols[g]))) for g in "rz"})
    named.update({f"{prefix}b_xh": (cell.bias, _Layout((0, cols["h"]))),
                  f"{prefix}b_hh": (cell.bias, _Layout((1, cols["h"])))})
    return named


def _named(module):
    """{canonical name: (variable, _Layout)}.

    A Dense kernel is already (in, out): canonical `W_x` is the kernel as it is,
    and the bias of `W_x` is `b_x`. An Embedding's table (vocab, embed) is named by
    the layer, like a dense map: `embedding`, `encoder.embedding`. keras.layers.GRU
    maps to `l{i}.W_xr` ... (see `_gru`). A layer's own weights, made with
    `add_weight` (LayerNorm's gamma and beta), keep their attribute names: `norm.gamma`.
    """
    named = {}
    for path, sub in _submodules(module):
        prefix = f"{path}." if path else ""
        if isinstance(sub, keras.layers.Dense):
            named[path] = (sub.kernel, _Layout())
            if sub.bias is not None:
                head, _, leaf = path.rpartition(".")
                named[f"{head}.b{leaf[1:]}" if head else f"b{leaf[1:]}"] = (sub.bias, _Layout())
        elif isinstance(sub, keras.layers.Embedding):
            named[path] = (sub.embeddings, _Layout())
        elif isinstance(sub, keras.layers.GRU):
            named.update(_gru(prefix, sub))
        else:
            named.update({prefix + name: (v, _Layout()) for name, v in vars(sub).items()
                          if isinstance(v, keras.Variable) and not name.startswith("_")})
    return named


def get_params(module):
    return {name: np.array(layout.get(v.numpy())) for name, (v, layout) in _named(module).items()}


def set_params(module, params):
    named = _named(module)
    _checks.check_param_shapes({name: layout(v.numpy()).shape for name, (v, layout) in named.items()}, params)
    arrays = {id(v): (v, v.numpy().copy()) for v, _ in named.values()}  # one copy per variable, written in place
    for name, (v, layout) in named.items():
        layout.set(arrays[id(v)][1], np.asarray(params[name]))
    for v, a in arrays.values():
        v.assign(a)


def save_params(module, path):
    checkpoint.save(get_params(module), path)


def load_params(module, path):
    set_params(module, checkpoint.load(path))
