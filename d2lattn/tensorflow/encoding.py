"""Positions: sinusoidal encoding, ALiBi's score biases and rotary encoding (RoPE)."""

import keras
import tensorflow as tf

from d2lattn import _checks
from d2lattn.rotary import rope_frequencies
from d2lattn.tensorflow.ops import _Layer


def sinusoids(max_len, num_hiddens):
    """(1, max_len, num_hiddens): sin(pos / 10000^(2i/d)) in column 2i, cos in 2i+1."""
    pos = tf.range(max_len, dtype=tf.float64)[:, None]                          # (max_len, 1)
    freq = 10000.0 ** (tf.range(0, num_hiddens, 2, dtype=tf.float64) / num_hiddens)  # (ceil(d/2),)
    angles = pos / freq                                                         # (max_len, ceil(d/2))
    P = tf.stack([tf.sin(angles), tf.cos(angles)], axis=-1)                     # (max_len, ceil(d/2), 2)
    P = tf.reshape(P, (1, max_len, -1))[:, :, :num_hiddens]                     # odd d: one fewer cos
    return tf.cast(P, tf.float32)


class PositionalEncoding(_Layer):
    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        super().__init__()
        self.P = sinusoids(_checks.checked_positive_int("max_len", max_len),
                           _checks.checked_positive_int("num_hiddens", num_hiddens))
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.built = True  # no weights: nothing for Keras to build on the first call

    def call(self, X, *, offset=0, training=None):
        if tf.is_tensor(offset):                                                # traced: a cache of unknown length
            _checks.check_sequence_input(X.shape, self.P.shape[-1])
        else:
            offset = _checks.checked_offset(offset)
            _checks.check_sequence_input(X.shape, self.P.shape[-1], self.P.shape[1] - offset)
        X = X + self.P[:, offset: offset + tf.shape(X)[1]]                      # (b, T, d): from position offset
        return self.dropout(X, training=training)


def alibi_slopes(num_heads):
    n = _checks.checked_positive_int("num_heads", num_heads)
    c = 1 << (n.bit_length() - 1)                                               # largest power of two <= n
    slopes = [2.0 ** (-8 * (h + 1) / c) for h in range(c)]
    slopes += [2.0 ** (-8 * (h + 1) / (2 * c)) for h in range(0, 2 * (n - c), 2)]  # every other one of 2c
    return tf.constant(slopes, tf.float32)                                      # (heads,)


def alibi_bias(num_heads, num_queries, num_keys=None, *, offset=0):
    num_keys = num_queries if num_keys is None else num_keys
    offset = _checks.checked_integer("offset", offset)
    distance = tf.abs(offset + tf.range(num_queries)[:, None] - tf.range(num_keys))  # (q, k)
    return -alibi_slopes(num_heads)[:, None, None] * tf.cast(distance, tf.float32)   # (heads, q, k)


class RotaryPositionalEncoding(_Layer):
    """`offset` may be an int32 tensor (a position known only at run time under tf.function);
    theta and YaRN's factor on the rotated features from d2lattn.rotary for a `scaling`."""

    def __init__(self, head_size, base=10000.0, *, interleaved=False, scaling=None):
        super().__init__()
        self.head_size = _checks.checked_head_size(head_size)
        self.interleaved = bool(interleaved)
        self.theta, self.factor = rope_frequencies(head_size, base, scaling)   # (head_size / 2,), float64
        self.built = True  # no weights: nothing for Keras to build on the first call

    def call(self, X, *, offset=0, training=None):
        _checks.check_features("X", X.shape, self.head_size, "the head_size")
        if not tf.is_tensor(offset):
            _checks.checked_integer("offset", offset)
        positions = tf.cast(offset + tf.range(tf.shape(X)[-2]), tf.float64)   # (T,)
        angles = positions[:, None] * self.theta                               # (T, head_size / 2), float64
        cos, sin = tf.cast(self.factor * tf.cos(angles), X.dtype), tf.cast(self.factor * tf.sin(angles), X.dtype)
        half = self.head_size // 2
        a, b = (X[..., 0::2], X[..., 1::2]) if self.interleaved else (X[..., :half], X[..., half:])  # (..., T, half)
        rotated = (a * cos - b * sin, a * sin + b * cos)
        if self.interleaved:
            return tf.reshape(tf.stack(rotated, -1), tf.shape(X))              # pairs back side by side
        return tf.concat(rotated, -1)                                          # (..., T, head_size)
