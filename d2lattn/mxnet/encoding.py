"""Positions: sinusoidal encoding, ALiBi's score biases and rotary encoding (RoPE)."""

import mxnet as mx
import numpy as onp
from mxnet import np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.ops import _traced, _train_mode, tensor
from d2lattn.rotary import rope_frequencies


def sinusoids(max_len, num_hiddens):
    """(1, max_len, num_hiddens): sin(pos / 10000^(2i/d)) in column 2i, cos in 2i+1."""
    pos = onp.arange(max_len)[:, None]                                        # (max_len, 1)
    freq = onp.power(10000.0, onp.arange(0, num_hiddens, 2) / num_hiddens)    # (ceil(d/2),)
    angles = pos / freq                                                       # (max_len, ceil(d/2))
    P = onp.zeros((1, max_len, num_hiddens))
    P[0, :, 0::2] = onp.sin(angles)
    P[0, :, 1::2] = onp.cos(angles[:, : num_hiddens // 2])                    # odd d: one fewer cos
    return tensor(P)


class PositionalEncoding(nn.HybridBlock):
    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        super().__init__()
        # A Constant: part of the hybridized graph, never trained, not a parameter.
        codes = sinusoids(_checks.checked_positive_int("max_len", max_len),
                          _checks.checked_positive_int("num_hiddens", num_hiddens))
        self.codes = self.params.get_constant("codes", codes)
        self.rate = _checks.checked_dropout_rate(dropout)
        self.initialize()

    @property
    def P(self):
        return self.codes.data()                                              # (1, max_len, num_hiddens)

    def __call__(self, X, *, offset=0, training=None):
        offset = _checks.checked_offset(offset)
        if _traced(self, X):                                                   # a graph symbol: no shapes
            positions = mx.sym.npx.arange_like(X, axis=1).astype("int32") + offset
        else:
            _checks.check_sequence_input(X.shape, self.codes.shape[-1], self.codes.shape[1] - offset)
            positions = tensor(offset + onp.arange(X.shape[1]), "int32").as_in_ctx(X.ctx)
        with _train_mode(training):
            return super().__call__(X, positions)

    def hybrid_forward(self, F, X, positions, codes):
        X = X + F.np.take(codes, positions, axis=1)                            # (b, T, d): offset .. offset + T - 1
        return F.npx.dropout(X, p=self.rate) if self.rate else X               # active only in training


def alibi_slopes(num_heads):
    """Press et al.'s slopes: 2 ** (-8 (h + 1) / n) for n a power of two; otherwise those of the
    largest power of two c < n, then every other slope of 2c, the first n - c of them."""
    n = _checks.checked_positive_int("num_heads", num_heads)
    c = 2 ** (n.bit_length() - 1)                                             # the largest power of two <= n

    def geometric(m):
        return 2.0 ** (-8 * onp.arange(1, m + 1) / m)                         # (m,)

    return tensor(onp.concatenate([geometric(c), geometric(2 * c)[0::2][: n - c]]))  # (n,) float32


def alibi_bias(num_heads, num_queries, num_keys=None, *, offset=0):
    """(heads, q, k): -slope[h] * |offset + i - j|, the distance between query i and key j."""
    num_keys = num_queries if num_keys is None else num_keys
    offset = _checks.checked_integer("offset", offset)
    distance = onp.abs(offset + onp.arange(num_queries)[:, None] - onp.arange(num_keys))  # (q, k)
    return -alibi_slopes(num_heads).reshape(-1, 1, 1) * tensor(distance, "float32")    # (heads, q, k)


class RotaryPositionalEncoding(nn.HybridBlock):
    """Rotates each pair of features (a, b) by the angle p theta_i; pairs are split halves
    (x[i], x[i + d/2]) or, interleaved, neighbours (x[2i], x[2i + 1]).

    Both conventions are one formula, X cos + X[partner] sin with a signed sin, the pairs in a
    constant index array, so one graph serves any number of leading axes. The graph takes the
    positions p (T,) as an input and makes the angles in float64 (then cos and sin in float32),
    so a hybridized call serves every offset, and a call traced inside a parent's graph, which
    knows no shapes, counts its positions there; a parent passes the positions it made as
    `offset=(positions,)`.
    """

    def __init__(self, head_size, base=10000.0, *, interleaved=False, scaling=None):
        super().__init__()
        d = self.head_size = _checks.checked_head_size(head_size)
        self.interleaved = bool(interleaved)
        theta, self.factor = rope_frequencies(d, base, scaling)                  # (d/2,), YaRN's factor
        a, b = (onp.arange(0, d, 2), onp.arange(1, d, 2)) if self.interleaved else (
            onp.arange(d // 2), onp.arange(d // 2, d))                            # each pair's features
        freq, sign, partner = onp.zeros(d), onp.zeros(d), onp.zeros(d, dtype=onp.int32)
        freq[a], freq[b], sign[a], sign[b] = theta, theta, -1, 1                  # a cos - b sin, b cos + a sin
        partner[a], partner[b] = b, a
        self.freq = self.params.get_constant("freq", np.array(freq, dtype="float64"))      # (d,)
        self.sign = self.params.get_constant("sign", np.array(sign, dtype="float64"))      # (d,)
        self.partner = self.params.get_constant("partner", np.array(partner, dtype="int32"))  # (d,)
        self.initialize()

    def positions(self, offset, steps, ctx):
        """p = offset, ..., offset + T - 1, (T,) float64."""
        return tensor(_checks.checked_integer("offset", offset) + onp.arange(steps), "float64").as_in_ctx(ctx)

    def __call__(self, X, *, offset=0, training=None):  # no dropout: `training` is ignored
        if isinstance(offset, tuple):                                              # a parent's positions
            return super().__call__(X, *offset)
        if _traced(self, X):
            return super().__call__(X, mx.sym.npx.arange_like(X, axis=-2) + _checks.checked_integer("offset", offset))
        _checks.check_features("X", X.shape, self.head_size, "the head_size")
        return super().__call__(X, self.positions(offset, X.shape[-2], X.ctx))

    def hybrid_forward(self, F, X, positions, freq, sign, partner):
        angles = F.np.expand_dims(positions.astype("float64"), 1) * freq          # (T, d)
        cos, sin = (self.factor * F.np.cos(angles)).astype("float32"), (self.factor * sign * F.np.sin(angles)).astype(
            "float32")
        return X * cos + F.np.take(X, partner, axis=-1) * sin                      # (..., T, d)
