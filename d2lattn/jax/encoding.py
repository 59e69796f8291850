"""Positions: sinusoidal encoding, ALiBi biases and rotary encoding (RoPE)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from d2lattn import _checks
from d2lattn.jax.attention import _deterministic
from d2lattn.rotary import rope_frequencies


def sinusoids(max_len, num_hiddens):
    """(1, max_len, num_hiddens): sin(pos / 10000^(2i/d)) in column 2i, cos in 2i+1."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]                       # (max_len, 1)
    freq = np.power(10000.0, np.arange(0, num_hiddens, 2) / num_hiddens)      # (ceil(d/2),)
    angles = pos / freq                                                       # (max_len, ceil(d/2))
    P = np.zeros((1, max_len, num_hiddens))
    P[0, :, 0::2] = np.sin(angles)
    P[0, :, 1::2] = np.cos(angles[:, : num_hiddens // 2])                     # odd d: one fewer cos
    return jnp.asarray(P, dtype=jnp.float32)


class PositionalEncoding(nnx.Module):
    """`.P` is a constant jax array, kept in an nnx.Variable (module state, not an nnx.Param: never
    trained), so nnx's graph of a module that holds one can be cached (nnx.cached_partial).
    `rngs` (keyword-only, default `nnx.Rngs(0)`) seeds dropout."""

    def __init__(self, num_hiddens, dropout=0.0, max_len=1000, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.codes = nnx.Variable(sinusoids(_checks.checked_positive_int("max_len", max_len),
                                            _checks.checked_positive_int("num_hiddens", num_hiddens)))
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)

    @property
    def P(self):
        return self.codes.get_value()                                         # (1, max_len, num_hiddens)

    def __call__(self, X, *, offset=0, training=None):
        offset = _checks.checked_offset(offset)
        _checks.check_sequence_input(X.shape, self.P.shape[-1], self.P.shape[1] - offset)
        X = X + self.P[:, offset: offset + X.shape[1]]                        # (b, T, d): from position offset
        return self.dropout(X, deterministic=_deterministic(training))


def alibi_slopes(num_heads):
    n = _checks.checked_positive_int("num_heads", num_heads)
    c = 1 << (n.bit_length() - 1)                                             # the largest power of two <= n

    def geometric(m):
        return 2.0 ** (-8.0 * np.arange(1, m + 1) / m)                        # (m,): 2^(-8/m), 2^(-16/m), ...

    return jnp.asarray(np.concatenate([geometric(c), geometric(2 * c)[0::2][: n - c]]), dtype=jnp.float32)


def alibi_bias(num_heads, num_queries, num_keys=None, *, offset=0):
    num_keys = num_queries if num_keys is None else num_keys
    distance = (_checks.checked_integer("offset", offset) + jnp.arange(num_queries)[:, None]) - jnp.arange(num_keys)
    return -alibi_slopes(num_heads)[:, None, None] * jnp.abs(distance)        # (heads, q, k)


class RotaryPositionalEncoding(nnx.Module):
    """No parameters: `.theta` (head_size / 2,) is a constant jax array (d2lattn.rotary's, for a
    `scaling`), `.factor` YaRN's on the rotated features. `offset` may be a traced integer scalar
    (generate's compiled step)."""

    def __init__(self, head_size, base=10000.0, *, interleaved=False, scaling=None):
        self.head_size = _checks.checked_head_size(head_size)
        theta, self.factor = rope_frequencies(head_size, base, scaling)
        self.theta = jnp.asarray(theta, dtype=jnp.float32)
        self.interleaved = bool(interleaved)

    def __call__(self, X, *, offset=0, training=None):
        _checks.check_features("X", X.shape, self.head_size, "the head_size")
        if not isinstance(offset, jax.Array):
            offset = _checks.checked_integer("offset", offset)
        positions = offset + jnp.arange(X.shape[-2])                          # (T,)
        angles = positions[:, None] * self.theta                              # (T, head_size / 2)
        cos, sin = self.factor * jnp.cos(angles), self.factor * jnp.sin(angles)
        if self.interleaved:
            a, b = X[..., 0::2], X[..., 1::2]                                 # pairs (x[2i], x[2i + 1])
            return jnp.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(X.shape)
        a, b = jnp.split(X, 2, axis=-1)                                       # pairs (x[i], x[i + d / 2])
        return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], -1)    # (..., T, head_size)
