"""Canonical attention weights drawn by NumPy, for the native-parity tests (tests/native/) and
the benchmarks (benchmarks/): W (in, out), as d2lattn's get_params returns them."""

import numpy as np


def mha_weights(bias, rng, hidden):
    """MultiHeadAttention weights W_q, W_k, W_v, W_o (hidden, hidden), uniform in +-1/sqrt(hidden)."""
    scale = 1 / np.sqrt(hidden)
    params = {f"W_{x}": rng.uniform(-scale, scale, (hidden, hidden)).astype(np.float32) for x in "qkvo"}
    if bias:
        params.update({f"b_{x}": rng.uniform(-scale, scale, hidden).astype(np.float32) for x in "qkvo"})
    return params


def gqa_weights(params, kv_heads, hidden, heads):
    """Grouped-query weights from mha_weights: W_k, W_v (and b_k, b_v) keep the columns of their
    first kv_heads heads, (in, kv_heads * head_size)."""
    width = kv_heads * (hidden // heads)
    return {n: p[..., :width] if n[2] in "kv" else p for n, p in params.items()}


def random_gqa_weights(rng, hidden, heads, kv_heads):
    """Grouped-query weights without biases drawn afresh: W_k, W_v (hidden, kv_heads * head_size),
    uniform in +-1/sqrt(hidden)."""
    kv_hidden = hidden // heads * kv_heads
    shapes = {"W_q": (hidden, hidden), "W_k": (hidden, kv_hidden), "W_v": (hidden, kv_hidden), "W_o": (hidden, hidden)}
    return {n: (rng.uniform(-1, 1, s) / np.sqrt(hidden)).astype(np.float32) for n, s in shapes.items()}
