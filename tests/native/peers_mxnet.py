"""Multi-head attention built from Gluon's own blocks, holding d2lattn's canonical weights
(tests/native/weights.py), for tests/native/test_mxnet.py and benchmarks/bench_mxnet.py."""

import math

import d2lattn.mxnet  # noqa: F401  first: it switches MXNet to its NumPy interface

# isort: split
import mxnet as mx
import numpy as np
from mxnet.gluon import nn


class NativeMHA(nn.HybridBlock):
    """Multi-head attention from Gluon Dense, npx.batch_dot and npx.softmax(length=..., use_length=True).

    Called with per-row lengths (b * heads, q): softmax's `length` masks the
    keys of each row, and a row of length 0 gets zeros. With `kv_heads` < heads
    (grouped-query), each key/value head is repeated for its group of query heads.
    """

    def __init__(self, hidden, heads, bias, kv_heads=None):
        super().__init__()
        self.heads, self.scale = heads, 1 / math.sqrt(hidden // heads)
        self.kv_heads = kv_heads or heads
        kv = self.kv_heads * (hidden // heads)
        self.W_q, self.W_k, self.W_v, self.W_o = (
            nn.Dense(n, use_bias=bias, flatten=False, in_units=hidden) for n in (hidden, kv, kv, hidden))
        self.initialize()

    def split(self, F, X, heads):
        X = F.np.transpose(F.npx.reshape(X, (-2, -2, heads, -1)), (0, 2, 1, 3))       # (b, heads, n, dh)
        if heads < self.heads:                                                         # each kv head, group times
            X = F.np.concatenate([F.np.expand_dims(X, 2)] * (self.heads // heads), axis=2)  # (b, kv, group, n, dh)
            X = F.npx.reshape(X, (-2, -5, -2, -2))                                    # (b, self.heads, n, dh)
        return F.npx.reshape(X, (-5, -2, -2))                                         # (b * heads, n, dh)

    def hybrid_forward(self, F, queries, keys, values, row_lens):
        q = self.split(F, self.W_q(queries), self.heads)
        k, v = self.split(F, self.W_k(keys), self.kv_heads), self.split(F, self.W_v(values), self.kv_heads)
        scores = F.npx.batch_dot(q, k, transpose_b=True) * self.scale                 # (b * heads, q, k)
        weights = F.npx.softmax(scores, length=row_lens, use_length=True, axis=-1)
        out = F.npx.reshape(F.npx.batch_dot(weights, v), (-6, -1, self.heads, -2, -2))  # (b, heads, q, dh)
        out = F.npx.reshape(F.np.transpose(out, (0, 2, 1, 3)), (-2, -2, -5))          # (b, q, hidden)
        return self.W_o(out), weights


def native_mha(params, hidden, heads, kv_heads=None):
    """NativeMHA holding the canonical weights (Gluon's Dense stores W as (out, in))."""
    mha = NativeMHA(hidden, heads, bias="b_q" in params, kv_heads=kv_heads)
    for x in "qkvo":
        layer = getattr(mha, f"W_{x}")
        layer.weight.set_data(mx.np.array(params[f"W_{x}"].T))
        if layer.bias is not None:
            layer.bias.set_data(mx.np.array(params[f"b_{x}"]))
    return mha


def row_lengths(lens, heads, num_queries):
    """Key-padding lengths (b,) as use_length softmax wants them: one per row, (b * heads, q)."""
    return mx.np.array(np.repeat(np.asarray(lens, dtype=np.int32), heads * num_queries).reshape(-1, num_queries))
