"""Tensor helpers and the masked softmax in JAX."""

import jax
import jax.numpy as jnp
import numpy as np

from d2lattn import _checks

# --- tensor helpers ----------------------------------------------------------


def tensor(data, dtype=None):
    x = data if isinstance(data, jax.Array) else np.asarray(data)
    if dtype is None and jnp.issubdtype(x.dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.asarray(x, dtype=dtype)


def to_numpy(x):
    return np.array(x)


def ones(shape):
    return jnp.ones(shape)


def zeros(shape):
    return jnp.zeros(shape)


def arange(start, stop=None, step=1):
    return tensor(np.arange(start, stop, step))


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    return tensor(np.random.default_rng(seed).normal(mean, std, shape))


def bmm(a, b):
    return jnp.matmul(a, b)                               # (b, n, m) @ (b, m, p) -> (b, n, p)


def matmul(a, b):
    return jnp.matmul(a, b)


def reshape(x, shape):
    return jnp.reshape(x, shape)


def concat(xs, axis=0):
    return jnp.concatenate(xs, axis=axis)


def stack(xs, axis=0):
    return jnp.stack(xs, axis=axis)


def swapaxes(x, axis1, axis2):
    return jnp.swapaxes(x, axis1, axis2)


def exp(x):
    return jnp.exp(x)


def tanh(x):
    return jnp.tanh(x)


def where(condition, x, y):
    return jnp.where(condition, x, y)


def take(table, *indices):
    return jnp.asarray(table)[tuple(indices)]

# --- masking -------------------------------------------------------------------


def lengths(valid_lens, scores_shape):
    """`valid_lens` as integers shaped to broadcast against scores (b, ..., q, k)."""
    lens = jnp.asarray(valid_lens)
    lens = lens.reshape(_checks.lens_view(lens.shape, scores_shape, lens.dtype))  # (b, 1.., 1) or (b, 1.., q, 1)
    if not isinstance(lens, jax.core.Tracer):  # values are unknown while tracing
        _checks.check_lens_values(np.asarray(lens))           # whole numbers, none negative
    return lens.astype(jnp.int32) if _checks.lens_need_cast(lens.dtype) else lens  # a float length counts as an int


def keep_mask(scores_shape, valid_lens=None, mask=None):
    """Boolean array broadcastable to the scores: True where a query may attend, or None."""
    keep = None
    if valid_lens is not None:
        keep = jnp.arange(scores_shape[-1]) < lengths(valid_lens, scores_shape)
    if mask is not None:
        mask = jnp.asarray(mask)
        _checks.check_mask(mask.shape, scores_shape, mask.dtype)
        keep = mask if keep is None else keep & mask
    return keep


def masked_softmax(X, valid_lens=None, *, mask=None):
    """Half-precision scores are normalized in float32 and returned in their own dtype."""
    X = jnp.asarray(X)
    dtype = X.dtype if jnp.issubdtype(X.dtype, jnp.floating) else jnp.float32
    scores = X.astype(jnp.promote_types(dtype, jnp.float32))          # (..., q, k)
    keep = keep_mask(X.shape, valid_lens, mask)
    if keep is None:
        return jax.nn.softmax(scores, axis=-1).astype(dtype)
    # The lowest finite number, not -inf: an empty row stays finite (uniform)
    # on the way through softmax, and is then zeroed with every masked weight.
    scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
    return jnp.where(keep, jax.nn.softmax(scores, axis=-1), 0.0).astype(dtype)


def causal_mask(num_queries, num_keys=None, *, offset=0, window=None):
    """`offset` may also be a traced integer scalar (generate's compiled step)."""
    num_keys = num_queries if num_keys is None else num_keys
    if not isinstance(offset, jax.Array):
        offset = _checks.checked_integer("offset", offset)
    window = _checks.checked_window(window)
    i = offset + jnp.arange(num_queries)[:, None]                     # (q, 1): the queries' positions
    j = jnp.arange(num_keys)                                          # (k,): the keys' positions
    keep = j <= i                                                     # (q, k)
    return keep if window is None else keep & (i - j < window)
