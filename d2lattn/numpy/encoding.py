"""Positions: sinusoidal encoding, ALiBi's score biases and rotary encoding (RoPE)."""

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.params import Module
from d2lattn.rotary import rope_frequencies


def sinusoids(max_len, num_hiddens):
    """(1, max_len, num_hiddens): sin(pos / 10000^(2i/d)) in column 2i, cos in 2i+1."""
    pos = np.arange(max_len)[:, None]                                # (max_len, 1)
    freq = np.power(10000.0, np.arange(0, num_hiddens, 2) / num_hiddens)  # (ceil(d/2),)
    angles = pos / freq                                              # (max_len, ceil(d/2))
    P = np.zeros((1, max_len, num_hiddens))
    P[0, :, 0::2] = np.sin(angles)
    P[0, :, 1::2] = np.cos(angles[:, : num_hiddens // 2])            # odd d: one fewer cos
    return P


class PositionalEncoding(Module):
    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        super().__init__()
        self.P = sinusoids(_checks.checked_positive_int("max_len", max_len),
                           _checks.checked_positive_int("num_hiddens", num_hiddens))
        self.rate = _checks.checked_dropout_rate(dropout)

    def forward(self, X, *, offset=0, training=None):
        offset = _checks.checked_offset(offset)
        _checks.check_sequence_input(X.shape, self.P.shape[-1], self.P.shape[1] - offset)
        X = X + self.P[:, offset: offset + X.shape[1]]                 # (b, T, d): positions offset, offset + 1, ...
        return self.dropout(X, self.rate, training)


def alibi_slopes(num_heads):
    """Press et al.'s slopes: 2 ** (-8 (h + 1) / n) for n a power of two; otherwise those of the
    largest power of two c < n, then every other slope of 2c, the first n - c of them."""
    n = _checks.checked_positive_int("num_heads", num_heads)
    c = 2 ** (n.bit_length() - 1)                                    # the largest power of two <= n

    def geometric(m):
        return 2.0 ** (-8 * np.arange(1, m + 1) / m)                 # (m,)

    return np.concatenate([geometric(c), geometric(2 * c)[0::2][: n - c]])  # (n,)


def alibi_bias(num_heads, num_queries, num_keys=None, *, offset=0):
    """(heads, q, k): -slope[h] * |offset + i - j|, the distance between query i and key j."""
    num_keys = num_queries if num_keys is None else num_keys
    offset = _checks.checked_integer("offset", offset)
    distance = np.abs(offset + np.arange(num_queries)[:, None] - np.arange(num_keys))  # (q, k)
    return -alibi_slopes(num_heads)[:, None, None] * distance      # (heads, q, k)


class RotaryPositionalEncoding(Module):
    """Rotates each pair of features (a, b) by the angle p theta_i; pairs are split halves
    (x[i], x[i + d/2]) or, interleaved, neighbours (x[2i], x[2i + 1]). A `scaling` rescales
    theta (d2lattn.rotary), and YaRN's also scales the rotated features by its attention factor."""

    def __init__(self, head_size, base=10000.0, *, interleaved=False, scaling=None):
        super().__init__()
        self.head_size = _checks.checked_head_size(head_size)
        self.theta, self.factor = rope_frequencies(head_size, base, scaling)  # (d/2,), float
        self.interleaved = bool(interleaved)

    def forward(self, X, *, offset=0, training=None):
        _checks.check_features("X", X.shape, self.head_size, "the head_size")
        d = self.head_size
        p = _checks.checked_integer("offset", offset) + np.arange(X.shape[-2])  # (T,): absolute positions
        angles = p[:, None] * self.theta                                 # (T, d/2)
        cos, sin = self.factor * np.cos(angles), self.factor * np.sin(angles)
        a, b = (X[..., 0::2], X[..., 1::2]) if self.interleaved else (X[..., : d // 2], X[..., d // 2:])
        a, b = a * cos - b * sin, a * sin + b * cos                     # (..., T, d/2) each
        if self.interleaved:
            return np.stack([a, b], -1).reshape(X.shape)                 # (..., T, d): a0 b0 a1 b1 ...
        return np.concatenate([a, b], -1)                                # (..., T, d): a... b...
