"""Tensor helpers and the masked softmax, in float64 NumPy: the reference."""

import numpy as np

from d2lattn import _checks

# --- tensor helpers ----------------------------------------------------------


def tensor(data, dtype=None):
    x = np.asarray(data, dtype=dtype)
    return x.astype(np.float64) if dtype is None and x.dtype.kind == "f" else x


def to_numpy(x):
    return np.array(x)


def ones(shape):
    return np.ones(shape)


def zeros(shape):
    return np.zeros(shape)


def arange(start, stop=None, step=1):
    x = np.arange(start, stop, step)
    return tensor(x if x.dtype.kind == "f" else x.astype(np.int32))


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    return np.random.default_rng(seed).normal(mean, std, shape).astype(np.float32).astype(np.float64)


def bmm(a, b):
    return np.matmul(a, b)


def matmul(a, b):
    return np.matmul(a, b)


def reshape(x, shape):
    return np.reshape(x, shape)


def concat(xs, axis=0):
    return np.concatenate(xs, axis)


def stack(xs, axis=0):
    return np.stack(xs, axis)


def swapaxes(x, axis1, axis2):
    return np.swapaxes(x, axis1, axis2)


def exp(x):
    return np.exp(x)


def tanh(x):
    return np.tanh(x)


def where(condition, x, y):
    return np.where(condition, x, y)


def take(table, *indices):
    return np.asarray(table)[tuple(indices)]

# --- masking -------------------------------------------------------------------


def lengths(valid_lens, scores_shape):
    """`valid_lens` as integers shaped to broadcast against scores (b, ..., q, k)."""
    lens = np.asarray(valid_lens)
    lens = lens.reshape(_checks.lens_view(lens.shape, scores_shape, lens.dtype))
    _checks.check_lens_values(lens)                               # whole numbers, none negative
    return lens.astype(np.int64)                            # a float length counts like an integer


def keep_mask(scores_shape, valid_lens=None, mask=None):
    """Boolean array broadcastable to `scores_shape`: True where a query may attend."""
    keep = np.ones((1,) * len(scores_shape), dtype=bool)
    if valid_lens is not None:
        keep = keep & (np.arange(scores_shape[-1]) < lengths(valid_lens, scores_shape))
    if mask is not None:
        mask = np.asarray(mask)
        _checks.check_mask(mask.shape, scores_shape, mask.dtype)
        keep = keep & mask
    return keep


def masked_softmax(X, valid_lens=None, *, mask=None):
    """softmax over the last axis, restricted to the kept positions; computed in
    float64 and returned in the input's float dtype."""
    dtype = np.asarray(X).dtype if np.asarray(X).dtype.kind == "f" else np.float64
    X = np.asarray(X, dtype=np.float64)
    keep = keep_mask(X.shape, valid_lens, mask)            # broadcasts to X.shape
    scores = np.where(keep, X, -np.inf)
    top = scores.max(axis=-1, keepdims=True)               # (..., 1)
    top = np.where(np.isfinite(top), top, 0.0)             # an empty row has no max
    e = np.where(keep, np.exp(scores - top), 0.0)          # (..., k)
    total = e.sum(axis=-1, keepdims=True)
    return (e / np.where(total > 0, total, 1.0)).astype(dtype)  # empty row: 0 / 1 = 0


def causal_mask(num_queries, num_keys=None, *, offset=0, window=None):
    """Query i sits at position offset + i, key j at j: keep j <= offset + i, and within a
    window w also offset + i - j < w."""
    num_keys = num_queries if num_keys is None else num_keys
    offset, window = _checks.checked_integer("offset", offset), _checks.checked_window(window)
    i = offset + np.arange(num_queries)[:, None]           # (q, 1): the queries' positions
    j = np.arange(num_keys)                                # (k,): the keys' positions
    keep = j <= i                                          # (q, k)
    return keep if window is None else keep & (i - j < window)
