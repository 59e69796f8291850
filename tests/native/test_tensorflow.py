"""Keras' own attention and layer norm against ours, same weights; and Keras on TensorFlow whatever $KERAS_BACKEND says.

keras.layers.MultiHeadAttention is called (query, value, key) and takes an
`attention_mask` (b, q, k), True = attend, and/or `use_causal_mask=True`. Its
query/key/value kernels are (in, heads, dh) and its output kernel (heads, dh,
out): the canonical matrices reshaped (tests/native/peers_tensorflow.py's native_mha).

keras.layers.AdditiveAttention has no projections of its own: it scores the
queries and keys it is given as reduce_sum(scale * tanh(q + k), -1), `scale` of
shape (h,). Fed our projections W_q q and W_k k, that is sum_j scale_j tanh(.)_j,
and ours is w_v^T tanh(W_q q + W_k k) = sum_j w_v[j, 0] tanh(.)_j: so
scale = w_v[:, 0]. It is called [query, value, key] with masks [query_mask,
value_mask]; value_mask (b, k), True = attend, is key padding.

A query with nothing to attend to gets zeros from ours (the contract). Keras
pushes masked scores to a large negative number; keras.layers.Softmax, which
MultiHeadAttention uses when it returns its scores, then zeroes the masked
weights as we do, so those are compared everywhere. Its fused path
(keras.ops.dot_product_attention) and AdditiveAttention leave such a row
uniform: there only rows with something to attend to are compared, and the
empty rows are checked on their own.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from d2lattn import numpy as ref
from d2lattn import tensorflow as d2l  # first: Keras then runs on TensorFlow
from d2lattn.tensorflow import decoder
from tests import native
from tests.native.peers_tensorflow import native_gqa, native_mha
from tests.native.weights import gqa_weights, mha_weights

# isort: split
import keras
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, Q, K, H, HEADS = 3, 5, 6, 16, 4
LENS = np.array([0, 4, 6], dtype=np.int32)   # sequence 0 has nothing to attend to


def _uniform(rng, shape, fan_in):
    return rng.uniform(-1, 1, shape).astype(np.float32) / np.sqrt(fan_in)


def _masks(masking):
    """(valid_lens, our causal mask (q, k), key padding (b, k) True = attend, all three None where unused;
    keep (b, q, k), and the rows with something to attend to (b, q))."""
    lens = LENS if masking in ("padding", "both") else None
    causal = np.tril(np.ones((Q, K), dtype=bool)) if masking in ("causal", "both") else None
    padding = None if lens is None else np.arange(K) < lens[:, None]
    keep = np.ones((B, Q, K), dtype=bool)
    if padding is not None:
        keep &= padding[:, None, :]
    if causal is not None:
        keep &= causal
    return lens, causal, padding, keep, keep.any(-1)


def _check_empty_rows(ours_weights, native_weights, live):
    """Weights (b, q, k) on a query with nothing to attend to: zeros in ours, uniform in Keras."""
    assert (~live).any(), "the case should have an empty row"
    np.testing.assert_array_equal(ours_weights[~live], 0.0)
    np.testing.assert_allclose(native_weights[~live], 1 / ours_weights.shape[-1], atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_multihead_matches_keras_multiheadattention(bias, masking):
    rng = np.random.default_rng(0)
    params = mha_weights(bias, rng, H)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=bias)
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    q, k, v = (rng.normal(size=(B, n, H)).astype(np.float32) for n in (Q, K, K))   # distinct: order matters
    lens, causal, padding, _, live = _masks(masking)
    out = d2l.to_numpy(ours(q, k, v, lens, mask=causal))
    weights = d2l.to_numpy(ours.attention_weights)                                  # (b, heads, q, k)
    kwargs = {"attention_mask": None if padding is None else np.repeat(padding[:, None], Q, axis=1),  # (b, q, k)
              "use_causal_mask": causal is not None}
    want, want_weights = (np.asarray(t) for t in native(q, v, k, return_attention_scores=True, **kwargs))
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_allclose(weights, want_weights, atol=1e-5)
    fused = np.asarray(native(q, v, k, **kwargs))          # Keras' fused path: uniform on an empty row
    np.testing.assert_allclose(out[live], fused[live], atol=1e-5)
    if not live.all():
        np.testing.assert_array_equal(np.moveaxis(weights, 1, 2)[~live], 0.0)
        b_o = params["b_o"] if bias else 0.0                # nothing attended: the output is W_o's bias alone
        np.testing.assert_allclose(out[~live], np.broadcast_to(b_o, out[~live].shape), atol=1e-6)


@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_additive_matches_keras_additiveattention(masking):
    rng = np.random.default_rng(1)
    query_size, key_size, h, dv = 3, 7, 8, 5
    params = {"W_q": _uniform(rng, (query_size, h), query_size), "W_k": _uniform(rng, (key_size, h), key_size),
              "w_v": _uniform(rng, (h, 1), h)}
    ours = d2l.AdditiveAttention(query_size, key_size, h)
    d2l.set_params(ours, params)
    native = keras.layers.AdditiveAttention(use_scale=True)
    native.build([(None, Q, h), (None, K, dv), (None, K, h)])
    native.scale.assign(params["w_v"][:, 0])                                        # (h,)
    queries, keys, values = (rng.normal(size=(B, n, d)).astype(np.float32)
                             for n, d in ((Q, query_size), (K, key_size), (K, dv)))
    lens, causal, padding, _, live = _masks(masking)
    out = d2l.to_numpy(ours(queries, keys, values, lens, mask=causal))
    weights = d2l.to_numpy(ours.attention_weights)                                  # (b, q, k)
    projected_q = (queries.astype(np.float64) @ params["W_q"]).astype(np.float32)  # (b, q, h), by NumPy
    projected_k = (keys.astype(np.float64) @ params["W_k"]).astype(np.float32)     # (b, k, h)
    want, want_weights = (np.asarray(t) for t in native(
        [projected_q, values, projected_k], mask=[None, padding], use_causal_mask=causal is not None,
        return_attention_scores=True))
    np.testing.assert_allclose(out[live], want[live], atol=1e-5)
    np.testing.assert_allclose(weights[live], want_weights[live], atol=1e-5)
    if not live.all():
        _check_empty_rows(weights, want_weights, live)
        np.testing.assert_array_equal(out[~live], 0.0)


@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_dot_product_matches_keras_ops(masking):
    """keras.ops.dot_product_attention takes (B, T, N, H): ours on (b, heads, T, dh), transposed."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=(B, HEADS, n, 8)).astype(np.float32) for n in (Q, K, K))
    lens, causal, padding, _, live = _masks(masking)
    attention = d2l.DotProductAttention()
    out = d2l.to_numpy(attention(q, k, v, lens, mask=causal))                       # (b, heads, q, dv)
    want = keras.ops.dot_product_attention(*(np.swapaxes(t, 1, 2) for t in (q, k, v)), is_causal=causal is not None,
                                           mask=None if padding is None else padding[:, None, None, :])
    want = np.swapaxes(np.asarray(want), 1, 2)                                      # (b, heads, q, dv)
    np.testing.assert_allclose(np.moveaxis(out, 1, 2)[live], np.moveaxis(want, 1, 2)[live], atol=1e-5)
    np.testing.assert_array_equal(np.moveaxis(out, 1, 2)[~live], 0.0)


def test_masked_softmax_matches_keras_softmax():
    X = np.random.default_rng(3).normal(size=(B, Q, K)).astype(np.float32)
    lens, _, _, keep, live = _masks("both")
    weights = d2l.to_numpy(d2l.masked_softmax(X, lens, mask=d2l.causal_mask(Q, K)))
    want = np.asarray(keras.layers.Softmax()(X, mask=keep))   # zeros where masked, as ours
    assert not live.all()
    np.testing.assert_allclose(weights, want, atol=1e-6)
    np.testing.assert_array_equal(weights[~keep], 0.0)


def test_layer_norm_matches_keras_layernormalization():
    """Ours from scratch against keras.layers.LayerNormalization (last axis, biased variance),
    with the same gamma and beta and the same eps (Keras' default is 1e-3, ours 1e-5)."""
    rng = np.random.default_rng(6)
    n = 10
    params = {"gamma": rng.uniform(0.5, 1.5, n).astype(np.float32), "beta": rng.normal(size=n).astype(np.float32)}
    ours = d2l.LayerNorm(n)
    d2l.set_params(ours, params)
    native = keras.layers.LayerNormalization(axis=-1, epsilon=1e-5)
    native.build((None, Q, n))
    native.gamma.assign(params["gamma"])
    native.beta.assign(params["beta"])
    X = (rng.normal(size=(B, Q, n)) * 4 + 2).astype(np.float32)
    np.testing.assert_allclose(d2l.to_numpy(ours(X)), np.asarray(native(X)), atol=1e-5)


def _numpy_gru_layer(p, X, H):
    """The canonical formulas, one step at a time, in float64: X (b, T, in), H (b, h)."""
    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    outputs = []
    for x in np.swapaxes(X, 0, 1):                                                  # (b, in)
        r = sigmoid(x @ p["W_xr"] + H @ p["W_hr"] + p["b_r"])
        z = sigmoid(x @ p["W_xz"] + H @ p["W_hz"] + p["b_z"])
        n = np.tanh(x @ p["W_xh"] + p["b_xh"] + r * (H @ p["W_hh"] + p["b_hh"]))
        H = (1 - z) * n + z * H
        outputs.append(H)
    return np.stack(outputs, 1), H                                                  # (b, T, h), (b, h)


def test_gru_mapping_matches_keras_gru_run_directly():
    """Our GRU is keras.layers.GRU, so it is checked against the canonical formulas step by step:
    random Keras weights (kernel (in, 3h) and recurrent_kernel (h, 3h) in gate order z, r, h; bias
    (2, 3h), input and recurrent rows, both nonzero) are read through get_params, and each Keras
    layer, run directly, must equal the NumPy steps on those canonical parameters."""
    rng = np.random.default_rng(7)
    b, T, n_in, h = 3, 6, 4, 5
    gru = d2l.GRU(n_in, h, num_layers=2)
    for layer in (gru.l0, gru.l1):
        for v in (layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias):
            v.assign(rng.uniform(-0.8, 0.8, v.shape).astype(np.float32))
    params = d2l.get_params(gru)
    X, state = rng.normal(size=(b, T, n_in)).astype(np.float32), rng.normal(size=(2, b, h)).astype(np.float32)
    layer_input = X.astype(np.float64)
    for i, layer in enumerate((gru.l0, gru.l1)):
        want, want_last = _numpy_gru_layer({n.split(".")[1]: v for n, v in params.items() if n.startswith(f"l{i}.")},
                                           layer_input, state[i].astype(np.float64))
        got, got_last = layer(layer_input.astype(np.float32), initial_state=[state[i]])  # Keras' own GRU
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got_last), want_last, atol=1e-5)
        layer_input = want
    out, last = gru(X, state, training=False)
    np.testing.assert_allclose(d2l.to_numpy(out), layer_input, atol=1e-5)
    # set_params writes b_r and b_z to the input row and zeros to the recurrent one: the same GRU
    d2l.set_params(gru, params)
    np.testing.assert_array_equal(gru.l0.cell.bias.numpy()[1, : 2 * h], 0.0)
    np.testing.assert_allclose(d2l.to_numpy(gru(X, state, training=False)[1]), d2l.to_numpy(last), atol=1e-6)


def test_training_follows_the_keras_call_context():
    """training=None: dropout is on inside a model called with training=True, off otherwise."""
    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.attention = d2l.DotProductAttention(dropout=0.5)

        def call(self, X, training=None):
            return self.attention(X, X, X)

    X = np.random.default_rng(4).normal(size=(2, 8, 4)).astype(np.float32)
    model, plain = Model(), d2l.DotProductAttention()
    np.testing.assert_allclose(model(X), plain(X, X, X), atol=1e-6)
    np.testing.assert_allclose(model(X, training=False), plain(X, X, X), atol=1e-6)
    assert not np.allclose(model(X, training=True), plain(X, X, X), atol=1e-3)
    assert not np.allclose(model.attention(X, X, X, training=True), plain(X, X, X), atol=1e-3)


def test_traced_with_unknown_batch_and_lengths():
    """A user's tf.function with unknown batch and sequence sizes; weights returned from the trace."""
    ours = d2l.MultiHeadAttention(H, HEADS)

    @tf.function(input_signature=[tf.TensorSpec((None, None, H)), tf.TensorSpec((None,), tf.int32)])
    def run(X, lens):
        return ours(X, X, X, lens), ours.attention_weights

    X = np.random.default_rng(5).normal(size=(B, K, H)).astype(np.float32)
    out, weights = run(X, LENS)
    np.testing.assert_allclose(out, ours(X, X, X, LENS), atol=1e-6)
    np.testing.assert_allclose(weights, ours.attention_weights, atol=1e-6)
    assert weights.shape == (B, HEADS, K, K)


# --- modern attention and the language model (issues 13, 14) -------------------------
# Keras has grouped-query attention (GroupQueryAttention, also with a causal sliding window),
# a score bias in keras.ops.dot_product_attention and RMSNormalization; each is matched with the
# same weights, and the same numbers are also computed explicitly in float64 below. Keras itself
# ships no rotary encoding; keras-hub's RotaryEmbedding is not installed here (it is not a
# dependency of this project), so RoPE is held to the NumPy reference by the harness and to the
# relative-position property by tests/test_encoding.py.


def _softmax64(scores, keep):
    """Softmax over the kept positions in float64; a row with nothing kept is zeros."""
    top = np.where(keep, scores, -np.inf).max(-1, keepdims=True)
    e = np.where(keep, np.exp(scores - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def _gqa64(params, queries, keys, values, heads, kv_heads, keep, score_bias=0.0):
    """Grouped-query attention from the canonical parameters in float64: query head h reads key/value
    head h // (heads // kv_heads), indexed explicitly; keep (b, q, k). -> output, weights (b, heads, q, k)."""
    p = {n: a.astype(np.float64) for n, a in params.items()}

    def heads_of(X, x, n):
        Y = X.astype(np.float64) @ p[f"W_{x}"] + p.get(f"b_{x}", 0.0)             # (b, t, n * dh)
        return Y.reshape(*Y.shape[:2], n, -1).transpose(0, 2, 1, 3)              # (b, n, t, dh)

    kv = np.arange(heads) // (heads // kv_heads)                                  # (heads,): its kv head
    q = heads_of(queries, "q", heads)                                             # (b, heads, q, dh)
    k, v = heads_of(keys, "k", kv_heads)[:, kv], heads_of(values, "v", kv_heads)[:, kv]  # (b, heads, k, dh)
    weights = _softmax64(q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1]) + score_bias, keep[:, None])
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(len(queries), queries.shape[1], -1)
    return out @ p["W_o"] + p.get("b_o", 0.0), weights


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_grouped_query_matches_keras_groupqueryattention(kv_heads, bias, masking):
    """num_kv_heads=1 is multi-query attention. Keras returns its weights from the Softmax-layer path,
    which zeroes masked weights as ours; its fused path (no weights) is compared on rows with
    something to attend to."""
    rng = np.random.default_rng(8)
    params = gqa_weights(mha_weights(bias, rng, H), kv_heads, hidden=H, heads=HEADS)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=bias, num_kv_heads=kv_heads)
    d2l.set_params(ours, params)
    native = native_gqa(params, H, HEADS, kv_heads)
    q, k, v = (rng.normal(size=(B, n, H)).astype(np.float32) for n in (Q, K, K))
    lens, causal, padding, keep, live = _masks(masking)
    out = d2l.to_numpy(ours(q, k, v, lens, mask=causal))
    weights = d2l.to_numpy(ours.attention_weights)                                 # (b, heads, q, k)
    kwargs = {"attention_mask": None if padding is None else np.repeat(padding[:, None], Q, axis=1),
              "use_causal_mask": causal is not None}
    want, want_weights = (np.asarray(t) for t in native(q, v, k, return_attention_scores=True, **kwargs))
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_allclose(weights, want_weights, atol=1e-5)
    np.testing.assert_allclose(out[live], np.asarray(native(q, v, k, **kwargs))[live], atol=1e-5)
    exact, exact_weights = _gqa64(params, q, k, v, HEADS, kv_heads, keep)
    np.testing.assert_allclose(out, exact, atol=1e-5)
    np.testing.assert_allclose(weights, exact_weights, atol=1e-6)


def test_alibi_bias_in_grouped_query_attention_matches_float64():
    """An ALiBi score_bias (heads, q, k) on grouped-query heads with a causal mask and lengths."""
    rng = np.random.default_rng(9)
    params = gqa_weights(mha_weights(True, rng, H), 2, hidden=H, heads=HEADS)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=True, num_kv_heads=2)
    d2l.set_params(ours, params)
    q, k, v = (rng.normal(size=(B, n, H)).astype(np.float32) for n in (Q, K, K))
    lens, causal, _, keep, _ = _masks("both")
    slopes = 2.0 ** (-8 * np.arange(1, HEADS + 1) / HEADS)                          # HEADS is a power of two
    alibi = -slopes[:, None, None] * np.abs((K - Q) + np.arange(Q)[:, None] - np.arange(K))  # (heads, q, k)
    np.testing.assert_allclose(d2l.to_numpy(d2l.alibi_bias(HEADS, Q, K, offset=K - Q)), alibi, atol=1e-7)
    out = d2l.to_numpy(ours(q, k, v, lens, mask=causal, score_bias=d2l.alibi_bias(HEADS, Q, K, offset=K - Q)))
    exact, exact_weights = _gqa64(params, q, k, v, HEADS, 2, keep, alibi)
    np.testing.assert_allclose(out, exact, atol=1e-5)
    np.testing.assert_allclose(d2l.to_numpy(ours.attention_weights), exact_weights, atol=1e-6)


def test_sliding_window_matches_keras_groupqueryattention():
    """CausalSelfAttention without rotary encoding, window 3, against GroupQueryAttention(sliding_window=3)
    called with use_causal_mask=True: each position sees itself and the two before it."""
    rng = np.random.default_rng(10)
    T, window = 7, 3
    params = gqa_weights(mha_weights(True, rng, H), 2, hidden=H, heads=HEADS)
    ours = d2l.CausalSelfAttention(H, HEADS, num_kv_heads=2, window=window, rope_base=None, bias=True)
    d2l.set_params(ours, params)
    native = native_gqa(params, H, HEADS, 2, sliding_window=window)
    X = rng.normal(size=(B, T, H)).astype(np.float32)
    out, _ = ours(X)
    want, want_weights = native(X, X, X, use_causal_mask=True, return_attention_scores=True)
    np.testing.assert_allclose(d2l.to_numpy(out), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(d2l.to_numpy(ours.attention_weights), np.asarray(want_weights), atol=1e-5)
    band = (np.arange(T)[:, None] >= np.arange(T)) & (np.arange(T)[:, None] - np.arange(T) < window)
    np.testing.assert_array_equal(d2l.to_numpy(d2l.causal_mask(T, window=window)), band)
    exact, _ = _gqa64(params, X, X, X, HEADS, 2, np.broadcast_to(band, (B, T, T)))
    np.testing.assert_allclose(d2l.to_numpy(out), exact, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "alibi"])
@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_score_bias_matches_keras_ops_bias(kind, masking):
    """DotProductAttention(score_bias=) against keras.ops.dot_product_attention(bias=) on (B, T, N, H)
    tensors, values and the gradient with respect to the bias, and against float64 math. Keras leaves
    an empty row uniform: there ours is zeros, and so is the bias's gradient at every masked score."""
    rng = np.random.default_rng(11)
    q, k, v = (rng.normal(size=(B, HEADS, n, 8)).astype(np.float32) for n in (Q, K, K))
    bias = (rng.normal(size=(B, HEADS, Q, K)) if kind == "random" else
            np.broadcast_to(d2l.to_numpy(d2l.alibi_bias(HEADS, Q, K)), (B, HEADS, Q, K))).astype(np.float32)
    projection = rng.normal(size=(B, HEADS, Q, 8)).astype(np.float32)
    lens, causal, padding, keep, live = _masks(masking)
    attention = d2l.DotProductAttention()
    bias_t = tf.Variable(bias)
    with tf.GradientTape(persistent=True) as tape:
        out = attention(q, k, v, lens, mask=causal, score_bias=bias_t)                 # (b, heads, q, dv)
        want = tf.transpose(keras.ops.dot_product_attention(
            *(np.swapaxes(t, 1, 2) for t in (q, k, v)), bias=bias_t, is_causal=causal is not None,
            mask=None if padding is None else padding[:, None, None, :]), (0, 2, 1, 3))
        ours_objective, want_objective = tf.reduce_sum(out * projection), tf.reduce_sum(want * projection)
    grad, want_grad = (tape.gradient(o, bias_t).numpy() for o in (ours_objective, want_objective))
    rows = np.broadcast_to(live[:, None], (B, HEADS, Q))                               # (b, heads, q)
    np.testing.assert_allclose(out.numpy()[rows], want.numpy()[rows], atol=1e-5)
    np.testing.assert_array_equal(out.numpy()[~rows], 0.0)
    kept = np.broadcast_to(keep[:, None], bias.shape)
    np.testing.assert_allclose(grad[kept], want_grad[kept], atol=1e-5)
    np.testing.assert_array_equal(grad[~kept], 0.0)
    weights = _softmax64(q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(8) + bias, kept)
    np.testing.assert_allclose(out.numpy(), weights @ v, atol=1e-5)


def test_rms_norm_matches_keras_rmsnormalization():
    """Keras' RMSNormalization is x * rsqrt(mean(x^2) + epsilon) * scale: eps inside the root, as ours,
    and the same default (1e-6). Inputs of size ~1e-3 make mean(x^2) comparable to eps, so a different
    eps or an eps outside the root would show (checked: Keras with epsilon=1e-5 is far off)."""
    rng = np.random.default_rng(12)
    n = 10
    gamma = rng.uniform(0.5, 1.5, n).astype(np.float32)
    ours = d2l.RMSNorm(n)
    d2l.set_params(ours, {"gamma": gamma})
    native = keras.layers.RMSNormalization()
    native.build((None, Q, n))
    native.scale.assign(gamma)
    X = (rng.normal(size=(B, Q, n)) * 1e-3).astype(np.float32)
    out = d2l.to_numpy(ours(X))
    np.testing.assert_allclose(out, np.asarray(native(X)), rtol=1e-5, atol=1e-6)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(out, X64 / np.sqrt((X64 ** 2).mean(-1, keepdims=True) + 1e-6) * gamma, rtol=1e-5)
    other = keras.layers.RMSNormalization(epsilon=1e-5)
    other.build((None, Q, n))
    assert not np.allclose(out, np.asarray(other(X)), rtol=1e-2)


def test_generate_traces_once_and_matches_the_eager_cache_and_the_reference():
    """generate runs each token in one traced call with fixed shapes (buffers preallocated inside
    generate, the position a tensor): two prompts of other lengths, other numbers of tokens, cached
    and uncached, greedy and sampled, and each of the two tf.functions traced once. The tokens equal
    an eager loop over CausalSelfAttention's (keys, values) cache and the NumPy reference's."""
    rng = np.random.default_rng(13)
    model = d2l.TransformerLM(13, 16, 4, 2, 24, num_kv_heads=2, window=4)
    params = {n: rng.normal(size=p.shape).astype(np.float32) * 0.5 for n, p in d2l.get_params(model).items()}
    d2l.set_params(model, params)
    reference = ref.TransformerLM(13, 16, 4, 2, 24, num_kv_heads=2, window=4)
    ref.set_params(reference, params)
    for T0, num_tokens, temperature in ((3, 6, 0.0), (5, 9, 1.0)):
        prompt = rng.integers(0, 13, (2, T0)).astype(np.int32)
        tokens = d2l.generate(model, prompt, num_tokens, temperature=temperature, seed=T0)
        np.testing.assert_array_equal(d2l.generate(model, prompt, num_tokens, use_cache=False,
                                                   temperature=temperature, seed=T0), tokens)
        np.testing.assert_array_equal(ref.generate(reference, prompt, num_tokens, temperature=temperature,
                                                   seed=T0), tokens)
        if temperature == 0:
            logits, cache = model(prompt)                                          # eager, the contract's cache
            for t in range(T0, T0 + num_tokens - 1):
                np.testing.assert_array_equal(np.argmax(logits[:, -1].numpy(), -1), tokens[:, t])
                logits, cache = model(tokens[:, t:t + 1], cache=cache)
            assert tuple(cache[0][0].shape) == (2, 2, 3, 4)                       # window 4: a rolling buffer of 3
    step, full = decoder._calls(model)
    assert (step.experimental_get_tracing_count(), full.experimental_get_tracing_count()) == (1, 1)


def test_train_lm_step_is_adam_clipped_by_the_dense_global_norm():
    """One train_lm step, by the formula: g' = g * clip / max(|g|, clip) with |g| the global norm of the
    dense gradients, then Keras' Adam w - lr sqrt(1 - b2) / (1 - b1) m / (sqrt(v) + eps), m = (1 - b1) g',
    v = (1 - b2) g'^2, eps = 1e-10. The embedding's gradient comes as IndexedSlices, one slice per
    occurrence of a token, and Keras' global_clipnorm squares slices one by one (a repeated token's
    sum of squares, not the square of its sum). A clip of 1e-7 leaves gradients ~1e-8, where both the
    norm and eps show in the step."""
    lr, clip, eps = 0.01, 1e-7, 1e-10
    model = d2l.TransformerLM(7, 8, 2, 1, 12)
    tokens = np.array([[1, 1, 1, 2, 3, 1], [4, 1, 5, 1, 1, 6]], dtype=np.int32)   # token 1 many times
    batch = (tokens[:, :-1], tokens[:, 1:], np.array([5, 5], np.int32))
    params = model.trainable_variables
    before = [v.numpy().astype(np.float64) for v in params]
    with tf.GradientTape() as tape:
        loss = d2l.sequence_loss(model(batch[0], training=True)[0], batch[1], batch[2])
    grads = [tf.convert_to_tensor(g).numpy().astype(np.float64) for g in tape.gradient(loss, params)]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    d2l.train_lm(model, [batch], epochs=1, lr=lr, clip=clip, progress=False)
    for v, w, g in zip(params, before, grads):
        g = g * clip / max(norm, clip)
        step = lr * np.sqrt(1 - 0.999) / (1 - 0.9) * (0.1 * g) / (np.sqrt(0.001 * g ** 2) + eps)
        np.testing.assert_allclose(v.numpy(), w - step, atol=lr * 1e-3, err_msg=v.path)


# --- Keras on TensorFlow whatever $KERAS_BACKEND says --------------------------------


def python(code, **env):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


USE = """
out = d2l.MultiHeadAttention(8, 2)(d2l.ones((2, 3, 8)), d2l.ones((2, 4, 8)), d2l.ones((2, 4, 8)), d2l.tensor([1, 4]))
import os, keras  # after d2lattn's TensorFlow backend loaded Keras
print(d2l.BACKEND, keras.config.backend(), os.environ.get("KERAS_BACKEND"), tuple(out.shape))
"""


@pytest.mark.parametrize("keras_backend", ["jax", "torch", "tensorflow"])
def test_keras_backend_variable_is_ignored(keras_backend):
    """Keras is pinned to TensorFlow while it loads (even to a framework not installed
    here), and the user's variable is left as it was."""
    run = python("import d2lattn as d2l" + USE, KERAS_BACKEND=keras_backend, D2LATTN_BACKEND="tensorflow")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["tensorflow", "tensorflow", keras_backend, "(2,", "3,", "8)"], run.stdout


def test_tensorflow_imported_first_is_fine():
    run = python("import tensorflow\nfrom d2lattn import tensorflow as d2l" + USE)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["tensorflow", "tensorflow"], run.stdout


def test_keras_loaded_on_another_backend_is_a_clear_error():
    """`import tensorflow` loads Keras' backend setting: with KERAS_BACKEND=jax it stays jax."""
    run = python("import tensorflow\nfrom d2lattn import tensorflow as d2l", KERAS_BACKEND="jax")
    assert run.returncode != 0
    assert "ImportError: the d2lattn backend 'tensorflow' needs Keras on TensorFlow" in run.stderr, run.stderr
    assert "KERAS_BACKEND='jax'" in run.stderr


def test_dot_product_matches_float64_math_with_distinct_keys_and_values():
    q, k, v, lens, causal, keep, want = native.float64_case()
    np.testing.assert_allclose(d2l.to_numpy(d2l.DotProductAttention()(q, k, v, lens, mask=causal)), want, atol=1e-5)
    theirs = keras.ops.dot_product_attention(*(x[:, :, None] for x in (q, k, v)), mask=keep[:, None])
    live = keep.any(-1)                                   # Keras gives an empty row uniform weights; ours zeros
    np.testing.assert_allclose(np.asarray(theirs)[:, :, 0][live], want[live], atol=1e-5)


def test_a_keras_sequential_of_d2lattn_layers_round_trips_through_a_keras_file(tmp_path):
    """README: an encoder stacked as a Keras user stacks one, positions then two blocks with
    dropout, saved to a .keras file and loaded back, gives the same outputs, and its blocks (and
    the layers they hold) are made again with the same settings."""
    model = keras.Sequential([keras.Input((5, 8)), d2l.PositionalEncoding(8, dropout=0.1),
                              d2l.TransformerEncoderBlock(8, 12, 2, dropout=0.2),
                              d2l.TransformerEncoderBlock(8, 12, 4, dropout=0.3, bias=True)])
    X = np.random.default_rng(11).normal(size=(2, 5, 8)).astype(np.float32)
    model.save(tmp_path / "encoder.keras")
    loaded = keras.models.load_model(tmp_path / "encoder.keras")
    np.testing.assert_array_equal(loaded(X).numpy(), model(X).numpy())
    rates = [[layer.rate for layer in m._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
             for m in (model, loaded)]
    assert rates[1] == rates[0] and set(rates[0]) == {0.1, 0.2, 0.3}
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


def test_output_gate_matches_keras_multiheadattention_use_gate():
    """Keras' MultiHeadAttention(use_gate=True) multiplies each head's output by sigmoid(query W_gate)
    before its output map, as Qwen3-Next's gated attention and CausalSelfAttention(output_gate=True) do;
    its gate kernel (in, heads, dh) is W_gate reshaped. Keras has no attention sinks, and
    keras.ops.dot_product_attention's attn_logits_soft_cap runs only with JAX on TPU (on TensorFlow it
    is a ValueError), so the cap has no native peer here."""
    rng = np.random.default_rng(11)
    dh = H // HEADS
    ours = d2l.CausalSelfAttention(H, HEADS, rope_base=None, output_gate=True)
    params = {n: _uniform(rng, p.shape, p.shape[0]) for n, p in d2l.get_params(ours).items()}
    d2l.set_params(ours, params)
    native = keras.layers.MultiHeadAttention(HEADS, key_dim=dh, use_bias=False, use_gate=True)
    native.build((None, None, H), (None, None, H), (None, None, H))
    for x, layer in (("q", native.query_dense), ("k", native.key_dense), ("v", native.value_dense),
                     ("gate", native._gate_dense)):
        layer.kernel.assign(params[f"W_{x}"].reshape(H, HEADS, dh))                 # (in, heads, dh)
    native.output_dense.kernel.assign(params["W_o"].reshape(HEADS, dh, H))         # (heads, dh, out)
    X = rng.normal(size=(B, K, H)).astype(np.float32)
    np.testing.assert_allclose(d2l.to_numpy(ours(X)[0]), np.asarray(native(X, X, X, use_causal_mask=True)),
                               atol=1e-5)
    with pytest.raises(ValueError, match="attn_logits_soft_cap"):
        keras.ops.dot_product_attention(X[:, :, None], X[:, :, None], X[:, :, None], attn_logits_soft_cap=1.0)
