"""Sinusoidal positional encoding."""

import numpy as onp
from mxnet import np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.ops import tensor, train_mode


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
        self.codes = self.params.get_constant("codes", sinusoids(_checks.positive_int("max_len", max_len),
                                                                  _checks.positive_int("num_hiddens", num_hiddens)))
        self.rate = _checks.dropout_rate(dropout)
        self.initialize()

    @property
    def P(self):
        return self.codes.data()                                              # (1, max_len, num_hiddens)

    def __call__(self, X, *, training=None):
        if isinstance(X, np.ndarray):                                          # concrete, not a graph symbol
            _checks.sequence_input(X.shape, self.codes.shape[-1], self.codes.shape[1])
        with train_mode(training):
            return super().__call__(X)

    def hybrid_forward(self, F, X, codes):
        T = F.npx.arange_like(X, axis=1).astype("int32")                       # positions 0..T-1
        X = X + F.np.take(codes, T, axis=1)                                    # (b, T, d)
        return F.npx.dropout(X, p=self.rate) if self.rate else X               # active only in training
