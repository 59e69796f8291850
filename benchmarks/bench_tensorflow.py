"""Our TensorFlow attention against Keras' own: `python -m benchmarks.bench_tensorflow`.

MultiHeadAttention against keras.layers.MultiHeadAttention (same weights; eval,
key-padding lengths, no gradients), both called inside tf.function; and
DotProductAttention against keras.ops.dot_product_attention on the same per-head
tensors, both inside tf.function. Keras' layer skips the explicit weights unless
asked for them (`return_attention_scores=True`); ours always keeps them in
`.attention_weights`, so it is timed against both. Grouped-query MultiHeadAttention
(num_kv_heads) against keras.layers.GroupQueryAttention, same weights, both in
tf.function. Then generation with and without the K/V cache at growing contexts.
"""

import functools
import os

import numpy as np

from benchmarks import cache, checkpoints, common, flex, linear, memory
from d2lattn import tensorflow as d2l  # first: Keras then runs on TensorFlow whatever $KERAS_BACKEND says

# isort: split
import keras
import tensorflow as tf

from tests.native.peers_tensorflow import native_gqa, native_mha, padding_mask


def grouped_query(tokens):
    """Our MultiHeadAttention(num_kv_heads=2) against keras.layers.GroupQueryAttention, key padding."""
    X, lens = (tf.constant(a) for a in common.inputs(tokens))
    params = common.gqa_weights(common.mha_weights(bias=True))
    ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True, num_kv_heads=common.GQA_KV_HEADS)
    d2l.set_params(ours, params)
    native = native_gqa(params, common.HIDDEN, common.HEADS, common.GQA_KV_HEADS)
    run_ours = tf.function(lambda X, lens: ours(X, X, X, lens, training=False))
    run_native = tf.function(lambda X, lens: native(X, X, X, attention_mask=padding_mask(
        lens, tf.shape(X)[1], tf.shape(X)[1]), training=False))
    np.testing.assert_allclose(run_ours(X, lens), run_native(X, lens), atol=1e-4)
    return (f"GQA {common.HEADS} heads / {common.GQA_KV_HEADS} kv, {tokens} tokens vs GroupQueryAttention",
            *common.compare(lambda: run_ours(X, lens), lambda: run_native(X, lens)))


def main():
    rows = []
    for tokens in common.TOKENS:
        X, lens = common.inputs(tokens)
        X, lens = tf.constant(X), tf.constant(lens)
        params = common.mha_weights(bias=True)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True)
        d2l.set_params(ours, params)
        native = native_mha(params, common.HIDDEN, common.HEADS)
        run_ours = tf.function(lambda X, lens: ours(X, X, X, lens, training=False))
        run_ours_weights = tf.function(lambda X, lens: (ours(X, X, X, lens, training=False), ours.attention_weights))

        @tf.function
        def run_native(X, lens, scores=False):
            mask = padding_mask(lens, tf.shape(X)[1], tf.shape(X)[1])
            return native(X, X, X, attention_mask=mask, return_attention_scores=scores, training=False)

        np.testing.assert_allclose(run_ours(X, lens), run_native(X, lens), atol=1e-4)
        for scores in (False, True):
            rows.append((f"MHA {tokens} tokens vs return_attention_scores={scores}", *common.compare(
                lambda: run_ours(X, lens), lambda s=scores: run_native(X, lens, s))))
        rows.append((f"MHA {tokens} tokens, weights returned, vs scores=True", *common.compare(
            lambda: run_ours_weights(X, lens), lambda: run_native(X, lens, True))))

        q = tf.constant(np.random.default_rng(2).normal(
            size=(common.BATCH, common.HEADS, tokens, common.HIDDEN // common.HEADS)).astype(np.float32))
        attention = d2l.DotProductAttention()
        run_dot = tf.function(lambda q, lens: attention(q, q, q, lens, training=False))   # (b, heads, T, dh)

        @tf.function
        def run_ops(q, lens):
            q = tf.transpose(q, (0, 2, 1, 3))                                  # (b, T, heads, dh): Keras' layout
            keep = (tf.range(tokens) < lens[:, None])[:, None, None, :]        # (b, 1, 1, k)
            return tf.transpose(keras.ops.dot_product_attention(q, q, q, mask=keep), (0, 2, 1, 3))

        np.testing.assert_allclose(run_dot(q, lens), run_ops(q, lens), atol=1e-4)
        rows.append((f"DotProductAttention {tokens} tokens vs keras.ops", *common.compare(
            lambda: run_dot(q, lens), lambda: run_ops(q, lens))))
        rows.append(grouped_query(tokens))
    common.report(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
                  f"batch {common.BATCH}, hidden {common.HIDDEN}, {common.HEADS} heads", rows)
    common.generation(d2l, "tf.function")


def blockwise_memory():
    """Blockwise against dense attention: peak memory (fresh processes) and time, vs Keras' fused op too."""
    def fused(q, k, v):  # keras.ops takes (b, T, heads, d)
        swap = lambda x: tf.transpose(x, [0, 2, 1, 3])  # noqa: E731
        return swap(keras.ops.dot_product_attention(swap(q), swap(k), swap(v), is_causal=True))

    memory.main(d2l, fused=fused)


def cache_per_token():
    """Cache bytes and time per generated token of MHA, GQA and MLA at 1k and 8k, each step in tf.function."""
    cache.main(d2l, compile=lambda layer: tf.function(lambda x, c: layer(x, cache=c, training=False)),
               how="tf.function")


def pretrained():
    """SmolLM2-135M's configuration: from_pretrained's seconds and generate's tokens per second
    (benchmarks/checkpoints.py)."""
    checkpoints.tokens_per_second(d2l, how="generate's steps in tf.function")


def linear_forms():
    """Linear attention and the delta rule at T = 4096: chunked against recurrent, each in tf.function."""
    linear.main(d2l, compile=tf.function, how="tf.function")


def flex_attention():
    """flex_attention's skipped tiles (benchmarks/flex.py), eagerly and in tf.function(jit_compile=True):
    eagerly each tile's dozen ops cost TensorFlow's per-op dispatch, more than their arithmetic."""
    def value_and_grads(d2l, fn, **kwargs):
        @tf.function(jit_compile=True)
        def step(q, k, v, projection):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                out = fn(q, k, v, **kwargs)
                objective = tf.reduce_sum(out * projection)
            return out, tape.gradient(objective, [q, k, v])

        return lambda *arrays: step(*(tf.constant(a) for a in arrays))

    flex.main(d2l, compiled=("tf.function(jit_compile=True)", functools.partial(tf.function, jit_compile=True),
                             value_and_grads))


if __name__ == "__main__":
    main()
    cache_per_token()
    pretrained()
    linear_forms()
    blockwise_memory()
    flex_attention()
