"""Sinusoidal positional encoding."""

import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks


def sinusoids(max_len, num_hiddens):
    """(1, max_len, num_hiddens): sin(pos / 10000^(2i/d)) in column 2i, cos in 2i+1."""
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)             # (max_len, 1)
    freq = torch.pow(10000.0, torch.arange(0, num_hiddens, 2, dtype=torch.float64) / num_hiddens)
    angles = pos / freq                                                       # (max_len, ceil(d/2))
    P = torch.zeros(1, max_len, num_hiddens, dtype=torch.float64)
    P[0, :, 0::2] = torch.sin(angles)
    P[0, :, 1::2] = torch.cos(angles[:, : num_hiddens // 2])                  # odd d: one fewer cos
    return P.float()


class PositionalEncoding(nn.Module):
    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        super().__init__()
        self.register_buffer("P", sinusoids(_checks.positive_int("max_len", max_len),
                                            _checks.positive_int("num_hiddens", num_hiddens)),
                             persistent=False)
        self.rate = _checks.dropout_rate(dropout)

    def forward(self, X, *, training=None):
        _checks.sequence_input(X.shape, self.P.shape[-1], self.P.shape[1])
        training = self.training if training is None else training
        X = X + self.P[:, : X.shape[1]]                                        # (b, T, d)
        return F.dropout(X, self.rate, training)
