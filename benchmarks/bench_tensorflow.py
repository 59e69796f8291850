"""Our TensorFlow attention against Keras' own: `python -m benchmarks.bench_tensorflow`.

MultiHeadAttention against keras.layers.MultiHeadAttention (same weights; eval,
key-padding lengths, no gradients), both called inside tf.function; and
DotProductAttention against keras.ops.dot_product_attention on the same per-head
tensors, both inside tf.function. Keras' layer skips the explicit weights unless
asked for them (`return_attention_scores=True`); ours always keeps them in
`.attention_weights`, so it is timed against both.
"""

import os

import numpy as np

from benchmarks import common
from d2lattn import tensorflow as d2l  # first: Keras then runs on TensorFlow whatever $KERAS_BACKEND says

# isort: split
import keras
import tensorflow as tf


def native_mha(params, hidden=common.HIDDEN, heads=common.HEADS):
    """keras.layers.MultiHeadAttention holding the canonical weights.

    Its query/key/value kernels are (in, heads, head_dim) and its output kernel
    (heads, head_dim, out): head i owns columns i*dh:(i+1)*dh of W_q, W_k, W_v and
    rows i*dh:(i+1)*dh of W_o, so each is the canonical matrix reshaped.
    """
    bias, dh = "b_q" in params, hidden // heads
    mha = keras.layers.MultiHeadAttention(heads, key_dim=dh, use_bias=bias)
    mha.build((None, None, params["W_q"].shape[0]), (None, None, params["W_v"].shape[0]),
              (None, None, params["W_k"].shape[0]))
    for x, layer in (("q", mha.query_dense), ("k", mha.key_dense), ("v", mha.value_dense)):
        layer.kernel.assign(params[f"W_{x}"].reshape(-1, heads, dh))          # (in, heads, dh)
        if bias:
            layer.bias.assign(params[f"b_{x}"].reshape(heads, dh))            # (heads, dh)
    mha.output_dense.kernel.assign(params["W_o"].reshape(heads, dh, hidden))  # (heads, dh, out)
    if bias:
        mha.output_dense.bias.assign(params["b_o"])
    return mha


def padding_mask(lens, num_queries, num_keys):
    """(b, q, k), True = may attend: Keras' attention_mask for key-padding lengths."""
    keep = tf.range(num_keys) < lens[:, None]                                  # (b, k)
    return tf.repeat(keep[:, None, :], num_queries, axis=1)


def main():
    rows = []
    for tokens in common.TOKENS:
        X, lens = common.inputs(tokens)
        X, lens = tf.constant(X), tf.constant(lens)
        params = common.mha_weights(bias=True)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True)
        d2l.set_params(ours, params)
        native = native_mha(params)
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
    common.report(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
                  f"batch {common.BATCH}, hidden {common.HIDDEN}, {common.HEADS} heads", rows)


if __name__ == "__main__":
    main()
