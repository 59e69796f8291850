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

from benchmarks import cache, common, flex, linear, memory
from d2lattn import mxnet as d2l  # switches MXNet to its NumPy interface first
from d2lattn.sampling import next_tokens
from tests.native.peers_mxnet import native_mha, row_lengths

GEN_VOCAB, GEN_HIDDEN, GEN_HEADS, GEN_LAYERS = 64, 128, 4, 2
GEN_CONTEXTS, GEN_STEPS = (64, 256, 1024), 16


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
        native = native_mha(params, common.HIDDEN, common.HEADS)
        expected = native(X, X, X, rows_lens)[0]
        np.testing.assert_allclose(ours(X, X, X, lens).asnumpy(), expected.asnumpy(), atol=1e-4)
        for mode in ("imperative", "hybridized"):
            if mode == "hybridized":
                ours.hybridize()
                native.hybridize()
            rows.append((f"MHA {tokens} tokens, {mode}", *common.compare(
                lambda: ours(X, X, X, lens), lambda: native(X, X, X, rows_lens), sync=wait)))
        gqa = common.gqa_weights(params)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True, num_kv_heads=common.GQA_KV_HEADS)
        d2l.set_params(ours, gqa)
        native = native_mha(gqa, common.HIDDEN, common.HEADS, kv_heads=common.GQA_KV_HEADS)
        np.testing.assert_allclose(ours(X, X, X, lens).asnumpy(), native(X, X, X, rows_lens)[0].asnumpy(), atol=1e-4)
        ours.hybridize()
        native.hybridize()
        label = f"GQA ({common.HEADS} heads, {common.GQA_KV_HEADS} kv) {tokens} tokens, hybridized"
        rows.append((label, *common.compare(lambda: ours(X, X, X, lens), lambda: native(X, X, X, rows_lens),
                                            sync=wait)))
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


def cache_per_token():
    """Cache bytes and time per generated token of MHA, GQA and MLA at 1k and 8k, each layer hybridized."""
    def hybridized(layer):
        layer.hybridize()
        return lambda x, c: layer(x, cache=c, training=False)

    cache.main(d2l, compile=hybridized, how="hybridized")


def linear_forms():
    """Linear attention and the delta rule at T = 4096: chunked against recurrent, imperative (the two
    functions loop over positions or chunks, which a hybridized graph cannot count: _backend.LACKS)."""
    linear.main(d2l, how="imperative")


if __name__ == "__main__":
    main()
    cache_per_token()
    linear_forms()
    blockwise_memory()
    flex.main(d2l, sync=wait)
