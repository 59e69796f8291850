"""Sinusoidal positional encoding."""

import keras
import tensorflow as tf

from d2lattn import _checks


def sinusoids(max_len, num_hiddens):
    """(1, max_len, num_hiddens): sin(pos / 10000^(2i/d)) in column 2i, cos in 2i+1."""
    pos = tf.range(max_len, dtype=tf.float64)[:, None]                          # (max_len, 1)
    freq = 10000.0 ** (tf.range(0, num_hiddens, 2, dtype=tf.float64) / num_hiddens)  # (ceil(d/2),)
    angles = pos / freq                                                         # (max_len, ceil(d/2))
    P = tf.stack([tf.sin(angles), tf.cos(angles)], axis=-1)                     # (max_len, ceil(d/2), 2)
    P = tf.reshape(P, (1, max_len, -1))[:, :, :num_hiddens]                     # odd d: one fewer cos
    return tf.cast(P, tf.float32)


class PositionalEncoding(keras.layers.Layer):
    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        super().__init__()
        self.P = sinusoids(_checks.positive_int("max_len", max_len),
                           _checks.positive_int("num_hiddens", num_hiddens))
        self.dropout = keras.layers.Dropout(_checks.dropout_rate(dropout))
        self.built = True  # no weights: nothing for Keras to build on the first call

    def call(self, X, *, training=None):
        _checks.sequence_input(X.shape, self.P.shape[-1], self.P.shape[1])
        X = X + self.P[:, : tf.shape(X)[1]]                                     # (b, T, d)
        return self.dropout(X, training=training)
