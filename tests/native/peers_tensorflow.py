"""Keras' own attention holding d2lattn's canonical weights (tests/native/weights.py), for
tests/native/test_tensorflow.py and benchmarks/bench_tensorflow.py."""

import d2lattn.tensorflow  # noqa: F401  first: Keras then runs on TensorFlow whatever $KERAS_BACKEND says

# isort: split
import keras
import tensorflow as tf


def native_mha(params, hidden, heads):
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


def native_gqa(params, hidden, heads, kv_heads, sliding_window=None):
    """keras.layers.GroupQueryAttention holding the canonical weights (its dense maps are the
    private _query_dense ... _output_dense). Query kernel (in, heads, dh), key and value kernels
    (in, kv_heads, dh), output kernel (heads, dh, out): the canonical matrices reshaped. It repeats
    each key/value head for its group (keras.ops.repeat), so query head h uses h // group, as ours."""
    bias, dh = "b_q" in params, hidden // heads
    gqa = keras.layers.GroupQueryAttention(dh, heads, kv_heads, use_bias=bias, sliding_window=sliding_window)
    gqa.build((None, None, params["W_q"].shape[0]), (None, None, params["W_v"].shape[0]),
              (None, None, params["W_k"].shape[0]))
    for x, layer in (("q", gqa._query_dense), ("k", gqa._key_dense), ("v", gqa._value_dense)):
        layer.kernel.assign(params[f"W_{x}"].reshape(layer.kernel.shape))           # (in, heads or kv_heads, dh)
        if bias:
            layer.bias.assign(params[f"b_{x}"].reshape(layer.bias.shape))           # (heads or kv_heads, dh)
    gqa._output_dense.kernel.assign(params["W_o"].reshape(heads, dh, hidden))       # (heads, dh, out)
    if bias:
        gqa._output_dense.bias.assign(params["b_o"])
    return gqa


def padding_mask(lens, num_queries, num_keys):
    """(b, q, k), True = may attend: Keras' attention_mask for key-padding lengths."""
    keep = tf.range(num_keys) < lens[:, None]                                  # (b, k)
    return tf.repeat(keep[:, None, :], num_queries, axis=1)
