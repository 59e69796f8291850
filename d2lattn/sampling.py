"""Choosing the next token from logits, backend-free, so the same logits give the same tokens
on every backend (each backend's `generate` hands its last logits here as NumPy)."""

import numpy as np

from d2lattn import _checks


def next_tokens(logits, temperature, rng):
    """logits (b, vocab) -> int32 (b,): argmax at temperature 0, otherwise one draw per row from
    softmax(logits / temperature), computed in float64, by inverting the cumulative sum at
    `rng.random()` (numpy.random.default_rng(seed), advanced once per row)."""
    logits = np.asarray(logits, dtype=np.float64)                  # (b, vocab)
    if temperature == 0:
        return logits.argmax(-1).astype(np.int32)
    scaled = logits / _checks.checked_positive_number("temperature", temperature)
    p = np.exp(scaled - scaled.max(-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)               # (b, vocab)
    u = rng.random(len(logits))[:, None]                           # (b, 1)
    return np.minimum((cdf < u).sum(-1), logits.shape[-1] - 1).astype(np.int32)
