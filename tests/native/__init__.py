"""Per-framework parity: each framework's own attention against ours, with the same weights.

`float64_attention` is the explicit formula every native test can also hold both to, so a test
never compares a kernel with itself (PyTorch's DotProductAttention *is* computed by SDPA)."""

import numpy as np


def float64_case(seed=7, b=3, q=4, k=6, d=8, dv=5):
    """Distinct queries, keys and values (a key/value swap shows), lengths (0: empty rows) and a
    lower-right causal mask, as float32 NumPy inputs; their keep mask (b, q, k) and the float64 answer."""
    rng = np.random.default_rng(seed)
    Q, K, V = (rng.normal(size=s).astype(np.float32) for s in ((b, q, d), (b, k, d), (b, k, dv)))
    lens = np.array([0, 3, 9][:b], dtype=np.int32)
    causal = np.tril(np.ones((q, k), dtype=bool), k - q)                 # lower-right: query i sees j <= i + k - q
    keep = (np.arange(k) < lens[:, None, None]) & causal                 # (b, q, k)
    return Q, K, V, lens, causal, keep, float64_attention(Q, K, V, keep)


def float64_attention(Q, K, V, keep):
    """softmax(Q K^T / sqrt(d)) V in float64 over the kept keys; a row with none is zeros."""
    Q, K, V = (np.asarray(x, dtype=np.float64) for x in (Q, K, V))
    scores = np.where(keep, Q @ np.swapaxes(K, -1, -2) / np.sqrt(Q.shape[-1]), -np.inf)
    top = np.max(scores, -1, keepdims=True)
    e = np.where(keep, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0.0)
    weights = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    return weights @ V
