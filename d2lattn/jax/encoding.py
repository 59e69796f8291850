"""Sinusoidal positional encoding."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from d2lattn import _checks
from d2lattn.jax.attention import _deterministic


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
    """`.P` is a constant jax array (module state, not an nnx.Param: never trained).
    `rngs` (keyword-only, default `nnx.Rngs(0)`) seeds dropout."""

    def __init__(self, num_hiddens, dropout=0.0, max_len=1000, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.P = sinusoids(_checks.positive_int("max_len", max_len), _checks.positive_int("num_hiddens", num_hiddens))
        self.dropout = nnx.Dropout(_checks.dropout_rate(dropout), rngs=rngs)

    def __call__(self, X, *, training=None):
        _checks.sequence_input(X.shape, self.P.shape[-1], self.P.shape[1])
        X = X + self.P[:, : X.shape[1]]                                       # (b, T, d)
        return self.dropout(X, deterministic=_deterministic(training))
