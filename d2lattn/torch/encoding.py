"""Positions: sinusoidal encoding, ALiBi's score biases and rotary encoding (RoPE)."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks
from d2lattn.rotary import rope_frequencies


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
        self.register_buffer("P", sinusoids(_checks.checked_positive_int("max_len", max_len),
                                            _checks.checked_positive_int("num_hiddens", num_hiddens)),
                             persistent=False)
        self.rate = _checks.checked_dropout_rate(dropout)

    def forward(self, X, *, offset=0, training=None):
        offset = _checks.checked_offset(offset)
        _checks.check_sequence_input(X.shape, self.P.shape[-1], self.P.shape[1] - offset)
        training = self.training if training is None else training
        X = X + self.P[:, offset: offset + X.shape[1]]                         # (b, T, d): from position offset
        return F.dropout(X, self.rate, training)


def alibi_slopes(num_heads):
    n = _checks.checked_positive_int("num_heads", num_heads)
    c = 2 ** int(math.log2(n))                                                # the largest power of two <= n
    slopes = [2 ** (-8 * (h + 1) / c) for h in range(c)]
    slopes += [2 ** (-8 * (h + 1) / (2 * c)) for h in range(0, 2 * c, 2)][: n - c]  # every other slope of 2c
    return torch.tensor(slopes, dtype=torch.float32)                          # (heads,)


def alibi_bias(num_heads, num_queries, num_keys=None, *, offset=0):
    num_keys = num_queries if num_keys is None else num_keys
    offset = _checks.checked_integer("offset", offset)
    i = torch.arange(num_queries, dtype=torch.float64).unsqueeze(1) + offset                          # (q, 1)
    j = torch.arange(num_keys, dtype=torch.float64)                                                   # (k,)
    slopes = alibi_slopes(num_heads).double()[:, None, None]                                          # (heads, 1, 1)
    return (-slopes * (i - j).abs()).float()                                                          # (heads, q, k)


class RotaryPositionalEncoding(nn.Module):
    """Rotates each pair (a, b) of features by the angle p * theta_i of its position p; theta
    (and YaRN's factor on the rotated features) from d2lattn.rotary for a `scaling`."""

    def __init__(self, head_size, base=10000.0, *, interleaved=False, scaling=None):
        super().__init__()
        self.head_size = _checks.checked_head_size(head_size)
        theta, self.factor = rope_frequencies(head_size, base, scaling)
        self.register_buffer("theta", torch.from_numpy(theta), persistent=False)  # (head_size / 2,), float64
        self.interleaved = bool(interleaved)

    def forward(self, X, *, offset=0, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.head_size, "the head_size")
        offset = _checks.checked_integer("offset", offset)
        position = torch.arange(X.shape[-2], dtype=torch.float64, device=X.device) + offset
        angles = position.unsqueeze(1) * self.theta                           # (T, head_size / 2)
        cos, sin = (self.factor * angles.cos()).to(X.dtype), (self.factor * angles.sin()).to(X.dtype)
        if self.interleaved:
            a, b = X[..., 0::2], X[..., 1::2]                                 # (..., T, head_size / 2) each
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)  # (..., T, head_size)
        a, b = X.chunk(2, dim=-1)                                             # split halves
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)          # (..., T, head_size)
