"""Our MXNet attention against a composite of MXNet's own pieces: `python -m benchmarks.bench_mxnet`.

MXNet 1.9 has no attention layer on its NumPy interface, so "native" is
multi-head attention as MXNet users write it: Gluon Dense layers, heads folded
into the batch, npx.batch_dot and the length-masked npx.softmax(use_length=True).
Same weights, eval (predict mode), key-padding lengths; both imperative, then
both hybridized. MXNet has no grouped-query attention either: the composite repeats
each key/value head for its group of query heads, as ours does. Then generation with
and without the K/V cache at growing contexts. Timings wait for MXNet's asynchronous
engine (npx.waitall).
"""

import math
import statistics
import time

import mxnet as mx
import numpy as np
from mxnet import npx
from mxnet.gluon import nn

from benchmarks import common, memory
from d2lattn import mxnet as d2l  # switches MXNet to its NumPy interface first
from d2lattn.sampling import next_tokens

GQA_KV_HEADS = 2
GEN_VOCAB, GEN_HIDDEN, GEN_HEADS, GEN_LAYERS = 64, 128, 4, 2
GEN_CONTEXTS, GEN_STEPS = (64, 256, 1024), 16


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


def native_mha(params, hidden=common.HIDDEN, heads=common.HEADS, kv_heads=None):
    """NativeMHA holding the canonical weights (Gluon's Dense stores W as (out, in))."""
    mha = NativeMHA(hidden, heads, bias="b_q" in params, kv_heads=kv_heads)
    for x in "qkvo":
        layer = getattr(mha, f"W_{x}")
        layer.weight.set_data(mx.np.array(params[f"W_{x}"].T))
        if layer.bias is not None:
            layer.bias.set_data(mx.np.array(params[f"b_{x}"]))
    return mha


def gqa_weights(params, kv_heads, hidden=common.HIDDEN, heads=common.HEADS):
    """Grouped-query canonical weights from common.mha_weights: W_k, W_v (and b_k, b_v) keep the
    columns of their first kv_heads heads, (in, kv_heads * head_size)."""
    width = kv_heads * (hidden // heads)
    return {n: p[..., :width] if n[2] in "kv" else p for n, p in params.items()}


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
        gqa = gqa_weights(params, GQA_KV_HEADS)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True, num_kv_heads=GQA_KV_HEADS)
        d2l.set_params(ours, gqa)
        native = native_mha(gqa, kv_heads=GQA_KV_HEADS)
        np.testing.assert_allclose(ours(X, X, X, lens).asnumpy(), native(X, X, X, rows_lens)[0].asnumpy(), atol=1e-4)
        ours.hybridize()
        native.hybridize()
        rows.append((f"GQA ({common.HEADS} heads, {GQA_KV_HEADS} kv) {tokens} tokens, hybridized", *common.compare(
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
    generation()


def step_times(model, prompt, use_cache, steps=GEN_STEPS):
    """Median seconds of one step of greedy generation after `prompt`, the steps `generate` takes:
    the next token from the last logits, then with the cache only that token (the cache grows by
    one a step), without it the whole sequence again."""
    rng, tokens, times = np.random.default_rng(0), d2l.tensor(prompt), []
    logits, cache = model(tokens, training=False)                           # prefill (and warm up), not timed
    for _ in range(steps):
        start = time.perf_counter()
        new = d2l.tensor(next_tokens(d2l.to_numpy(logits[:, -1]), 0.0, rng)[:, None])   # (1, 1)
        if use_cache:
            logits, cache = model(new, cache=cache, training=False)         # (1, 1, vocab)
        else:
            tokens = d2l.concat([tokens, new], axis=1)
            logits, _ = model(tokens, training=False)                       # (1, T, vocab)
        npx.waitall()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation():
    """Greedy generation from a small TransformerLM, hybridized, one sequence: seconds per new
    token at each context, with the cache (one position per step) and without (all again)."""
    model = d2l.TransformerLM(GEN_VOCAB, GEN_HIDDEN, GEN_HEADS, GEN_LAYERS, 2 * GEN_HIDDEN, num_kv_heads=2)
    model.hybridize()
    rng = np.random.default_rng(0)
    print(f"\nGeneration: TransformerLM({GEN_LAYERS} layers, hidden {GEN_HIDDEN}, {GEN_HEADS} heads, 2 kv heads), "
          "batch 1, hybridized, median of the steps")
    print(f"{'context':>8} {'cached ms/token':>16} {'uncached ms/token':>18} {'cached tok/s':>13} "
          f"{'uncached tok/s':>15}")
    for context in GEN_CONTEXTS:
        prompt = rng.integers(0, GEN_VOCAB, (1, context)).astype(np.int32)
        cached, uncached = step_times(model, prompt, True), step_times(model, prompt, False, steps=3)
        print(f"{context:>8} {cached * 1e3:>16.2f} {uncached * 1e3:>18.2f} {1 / cached:>13.0f} {1 / uncached:>15.0f}")


def blockwise_memory():
    """Blockwise against dense attention: peak memory (fresh processes) and time; MXNet has no fused attention."""
    memory.main(d2l, sync=lambda out: out.wait_to_read())


if __name__ == "__main__":
    main()
    blockwise_memory()
