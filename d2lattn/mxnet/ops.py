"""Tensor helpers and the masked softmax on MXNet's NumPy interface (mx.np, npx)."""

import contextlib

import mxnet as mx
import numpy as onp
from mxnet import autograd, np, npx

from d2lattn import _checks

# --- tensor helpers ----------------------------------------------------------


def tensor(data, dtype=None):
    x = data if isinstance(data, np.ndarray) else np.array(onp.asarray(data))
    if dtype is not None:
        return x.astype(onp.dtype(dtype), copy=False)
    return x.astype(onp.float32, copy=False) if onp.dtype(x.dtype).kind == "f" else x


def to_numpy(x):
    return x.asnumpy() if isinstance(x, np.ndarray) else onp.asarray(x)


def ones(shape):
    return np.ones(shape)


def zeros(shape):
    return np.zeros(shape)


def arange(start, stop=None, step=1):
    x = onp.arange(start, stop, step)
    return tensor(x if x.dtype.kind == "f" else x.astype(onp.int32))


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    return tensor(onp.random.default_rng(seed).normal(mean, std, shape))


def bmm(a, b):
    return npx.batch_dot(a, b)


def matmul(a, b):
    return np.matmul(a, b)


def reshape(x, shape):
    return np.reshape(x, tuple(shape))


def concat(xs, axis=0):
    return np.concatenate(list(xs), axis)


def stack(xs, axis=0):
    return np.stack(list(xs), axis)


def swapaxes(x, axis1, axis2):
    return np.swapaxes(x, axis1, axis2)


def exp(x):
    return np.exp(x)


def tanh(x):
    return np.tanh(x)


def where(condition, x, y):
    return np.where(condition, x, y)


def take(table, *indices):
    return table[tuple(indices)]

# --- modes and masking -----------------------------------------------------------

LENS_IN_GRAPH = ("valid_lens cannot enter a hybridized graph (it needs the scores' shape, which graph symbols "
                 "do not have): pass mask=keep_mask(scores_shape, valid_lens, mask), made outside the graph")


def _train_mode(training):
    """Context for one call: None keeps autograd's mode, True/False switch it (hybridized graphs too)."""
    if training is None:
        return contextlib.nullcontext()
    return autograd.train_mode() if training else autograd.predict_mode()


def _F(x):
    """Gluon's `F` for `x`: mx.symbol while a hybridized graph is traced, mx.ndarray otherwise."""
    return mx.sym if isinstance(x, mx.sym.Symbol) else mx.nd


def lengths(valid_lens, scores_shape, ctx=None):
    """`valid_lens` as int32 shaped to broadcast against scores (b, ..., q, k)."""
    lens = tensor(valid_lens).as_in_ctx(ctx or mx.current_context())
    lens = lens.reshape(_checks.lens_view(lens.shape, scores_shape, lens.dtype))  # (b, 1.., 1) or (b, 1.., q, 1)
    _checks.check_lens_values(lens.asnumpy())                 # whole numbers, none negative
    return lens.astype(onp.int32)                       # a float length counts like an integer


def _traced(block, X, **needs_arrays):
    """Whether `block` is being traced inside a parent's hybridized graph (X is a graph symbol).

    There only positions are known, not shapes: the arguments in `needs_arrays` (lengths,
    a cache), from which the block builds its masks before its graph, are then a TypeError
    when they are given.
    """
    if not isinstance(X, mx.sym.Symbol):
        return False
    given = [name for name, value in needs_arrays.items() if value is not None]
    if given:
        raise TypeError(f"{type(block).__name__} builds its masks from arrays, so it cannot take {given[0]} inside "
                        "a graph being traced: hybridize the block itself, or call it from a plain Block")
    return True


def _graph_keep(X, causal=False, window=None):
    """The `keep` array of a call traced inside a parent's graph, where X's positions (axis 1) are
    all that is known: every key ((1,)), or the causal mask (T, T) of those positions."""
    if not causal:
        return mx.sym.np.ones((1,), dtype=bool)
    positions = mx.sym.npx.arange_like(X, axis=1)                                # (T,)
    i, j = mx.sym.np.expand_dims(positions, 1), mx.sym.np.expand_dims(positions, 0)  # (T, 1), (1, T)
    keep = (j <= i).astype("float32")                                            # (T, T), 1 = may attend
    return keep if window is None else keep * (i - j < window)


def keep_mask(scores_shape, valid_lens=None, mask=None, ctx=None):
    """Boolean array of the scores' shape: True where a query may attend.

    Checks and builds from concrete arrays, before a (possibly hybridized) graph
    runs, which then takes this one mask. With neither lengths nor mask: (1,).
    """
    ctx = ctx or mx.current_context()
    keep = None
    if valid_lens is not None:
        keep = np.arange(scores_shape[-1], dtype="int32", ctx=ctx) < lengths(valid_lens, scores_shape, ctx)
    if mask is not None:
        mask = tensor(mask).as_in_ctx(ctx)
        _checks.check_mask(mask.shape, scores_shape, mask.dtype)
        keep = mask if keep is None else (keep * mask).astype(bool)  # MXNet 1.9 has no & on booleans
    # the scores' own shape: an op that broadcasts one operand against the scores has a backward
    # that reduces over the broadcast axes, in MXNet 1.9 the slowest op of a Transformer's step
    return np.ones((1,), dtype=bool, ctx=ctx) if keep is None else np.broadcast_to(keep, tuple(scores_shape))


def _lower_masked(X, keep):
    """(X with every masked score lowered to the lowest finite number, keep as 1/0 in X's dtype).

    The lowest finite number, not -inf: an empty row stays finite (uniform) on the
    way through softmax, to be zeroed after it. min(X, +max) keeps a score and
    min(X, -max) lowers it, in one broadcast op (np.where is slow in MXNet 1.9,
    and its gradient is wrong with a scalar).
    """
    F = _F(X)
    dtype = getattr(X, "dtype", onp.float32)                        # a graph symbol has none: float32
    on = keep.astype(dtype)                                         # keep's shape
    return F.np.minimum(X, (on * 2 - 1) * float(onp.finfo(dtype).max)), on


def masked_softmax(X, valid_lens=None, *, mask=None):
    F = _F(X)
    if valid_lens is None and mask is None:
        return F.npx.softmax(X, axis=-1)
    if F is mx.nd:                                                  # concrete: check, lengths to mask
        mask = keep_mask(X.shape, valid_lens, mask, X.ctx)
    elif valid_lens is not None:
        raise TypeError(f"masked_softmax: {LENS_IN_GRAPH}")
    scores, on = _lower_masked(X, mask)                              # (..., q, k)
    return F.npx.softmax(scores, axis=-1) * on                      # masked weights and empty rows: 0


def causal_mask(num_queries, num_keys=None, *, offset=0, window=None):
    num_keys = num_queries if num_keys is None else num_keys
    i = onp.arange(num_queries)[:, None] + _checks.checked_integer("offset", offset)   # (q, 1): query positions
    j = onp.arange(num_keys)                                                  # (k,): key positions
    keep = j <= i
    window = _checks.checked_window(window)
    if window is not None:
        keep &= i - j < window                                                # itself and window - 1 before
    return np.array(keep)                                                     # (q, k) bool
