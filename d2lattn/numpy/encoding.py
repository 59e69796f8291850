"""Sinusoidal positional encoding."""

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.params import Module


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
        self.P = sinusoids(_checks.positive_int("max_len", max_len),
                           _checks.positive_int("num_hiddens", num_hiddens))
        self.rate = _checks.dropout_rate(dropout)

    def forward(self, X, *, training=None):
        _checks.sequence_input(X.shape, self.P.shape[-1], self.P.shape[1])
        X = X + self.P[:, : X.shape[1]]                                # (b, T, d)
        return self.dropout(X, self.rate, training)
