"""Our MXNet attention against a composite of MXNet's own pieces: `python -m benchmarks.bench_mxnet`.

MXNet 1.9 has no attention layer on its NumPy interface, so "native" is
multi-head attention as MXNet users write it: Gluon Dense layers, heads folded
into the batch, npx.batch_dot and the length-masked npx.softmax(use_length=True).
Same weights, eval (predict mode), key-padding lengths; both imperative, then
both hybridized. Timings wait for MXNet's asynchronous engine (npx.waitall).
"""

import math

import mxnet as mx
import numpy as np
from mxnet import npx
from mxnet.gluon import nn

from benchmarks import common
from d2lattn import mxnet as d2l  # switches MXNet to its NumPy interface first


class NativeMHA(nn.HybridBlock):
    """Multi-head attention from Gluon Dense, npx.batch_dot and npx.softmax(length=..., use_length=True).

    Called with per-row lengths (b * heads, q): softmax's `length` masks the
    keys of each row, and a row of length 0 gets zeros.
    """

    def __init__(self, hidden, heads, bias):
        super().__init__()
        self.heads, self.scale = heads, 1 / math.sqrt(hidden // heads)
        self.W_q, self.W_k, self.W_v, self.W_o = (
            nn.Dense(hidden, use_bias=bias, flatten=False, in_units=hidden) for _ in range(4))
        self.initialize()

    def split(self, F, X):
        X = F.np.transpose(F.npx.reshape(X, (-2, -2, self.heads, -1)), (0, 2, 1, 3))  # (b, heads, n, dh)
        return F.npx.reshape(X, (-5, -2, -2))                                         # (b * heads, n, dh)

    def hybrid_forward(self, F, queries, keys, values, row_lens):
        q, k, v = self.split(F, self.W_q(queries)), self.split(F, self.W_k(keys)), self.split(F, self.W_v(values))
        scores = F.npx.batch_dot(q, k, transpose_b=True) * self.scale                 # (b * heads, q, k)
        weights = F.npx.softmax(scores, length=row_lens, use_length=True, axis=-1)
        out = F.npx.reshape(F.npx.batch_dot(weights, v), (-6, -1, self.heads, -2, -2))  # (b, heads, q, dh)
        out = F.npx.reshape(F.np.transpose(out, (0, 2, 1, 3)), (-2, -2, -5))          # (b, q, hidden)
        return self.W_o(out), weights


def native_mha(params, hidden=common.HIDDEN, heads=common.HEADS):
    """NativeMHA holding the canonical weights (Gluon's Dense stores W as (out, in))."""
    mha = NativeMHA(hidden, heads, bias="b_q" in params)
    for x in "qkvo":
        layer = getattr(mha, f"W_{x}")
        layer.weight.set_data(mx.np.array(params[f"W_{x}"].T))
        if layer.bias is not None:
            layer.bias.set_data(mx.np.array(params[f"b_{x}"]))
    return mha


def row_lengths(lens, heads, num_queries):
    """Key-padding lengths (b,) as use_length softmax wants them: one per row, (b * heads, q)."""
    return mx.np.array(np.repeat(np.asarray(lens, dtype=np.int32), heads * num_queries).reshape(-1, num_queries))


def wait(_):
    npx.waitall()


def main():
    rows = []
    for tokens in common.TOKENS:
        X, lens = common.inputs(tokens)
        rows_lens = row_lengths(lens, common.HEADS, tokens)
        X, lens = mx.np.array(X), mx.np.array(lens)
        params = common.mha_weights(bias=True)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True)
        d2l.set_params(ours, params)
        native = native_mha(params)
        expected = native(X, X, X, rows_lens)[0]
        np.testing.assert_allclose(ours(X, X, X, lens).asnumpy(), expected.asnumpy(), atol=1e-4)
        for mode in ("imperative", "hybridized"):
            if mode == "hybridized":
                ours.hybridize()
                native.hybridize()
            rows.append((f"MHA {tokens} tokens, {mode}", *common.compare(
                lambda: ours(X, X, X, lens), lambda: native(X, X, X, rows_lens), sync=wait)))
        q = mx.np.array(np.random.default_rng(2).normal(
            size=(common.BATCH * common.HEADS, tokens, common.HIDDEN // common.HEADS)).astype(np.float32))
        seq_lens = mx.np.array(np.repeat(np.asarray(lens.asnumpy()), common.HEADS))  # (b * heads,)
        attention = d2l.DotProductAttention()
        scale = 1 / math.sqrt(common.HIDDEN // common.HEADS)
        rows.append((f"DotProductAttention {tokens} tokens, imperative", *common.compare(
            lambda: attention(q, q, q, seq_lens),
            lambda: npx.batch_dot(npx.softmax(npx.batch_dot(q, q, transpose_b=True) * scale,
                                              length=rows_lens, use_length=True, axis=-1), q),
            sync=wait)))
    mkldnn = "MKLDNN" if mx.runtime.Features().is_enabled("MKLDNN") else "no MKLDNN"
    common.report(f"MXNet {mx.__version__} (NumPy interface, CPU, {mkldnn}), "
                  f"batch {common.BATCH}, hidden {common.HIDDEN}, {common.HEADS} heads, eval", rows)


if __name__ == "__main__":
    main()
