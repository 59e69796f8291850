"""MXNet's own attention pieces against ours, with the same weights.

MXNet 1.9 has no attention layer on its NumPy interface; its own masked
attention is npx.softmax(..., length=..., use_length=True), which masks the
keys of each row by a length and gives a row of length 0 zeros, as ours does.
A causal mask is lengths 1, 2, ..., q there. The composite
(tests/native/peers_mxnet.py's NativeMHA) builds multi-head attention from Gluon Dense
layers, npx.batch_dot and that softmax. Our LayerNorm is checked against
gluon.nn.LayerNorm; our GRU, built from Gluon's own rnn.GRU, against the
canonical formulas stepped through in NumPy and against Gluon's fused
multi-layer rnn.GRU.
"""

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import npx

from d2lattn import mxnet as d2l
from tests import native
from tests.native.peers_mxnet import native_mha, row_lengths
from tests.native.weights import gqa_weights, mha_weights

B, Q, K, H, HEADS = 3, 5, 6, 16, 4
LENS = np.array([0, 4, 6], dtype=np.int32)   # sequence 0 has nothing to attend to
MASKINGS = ["padding", "causal", "both"]


def _masks(masking):
    """(our valid_lens or None, our mask or None, use_length lengths (b, q) saying the same)."""
    lens = mx.np.array(LENS) if masking != "causal" else None
    causal = d2l.causal_mask(Q, K) if masking != "padding" else None
    rows = np.full((B, Q), K)
    if lens is not None:
        rows = np.minimum(rows, LENS[:, None])
    if causal is not None:
        rows = np.minimum(rows, np.arange(1, Q + 1))   # query i sees keys 0..i
    return lens, causal, rows.astype(np.int32)


def _use_length_softmax(X, rows):
    return npx.softmax(X, length=mx.np.array(rows), use_length=True, axis=-1)


@pytest.mark.parametrize("masking", [*MASKINGS, "per-query"])
def test_masked_softmax_matches_use_length_softmax(masking):
    X = mx.np.array(np.random.default_rng(0).normal(size=(B, Q, K)).astype(np.float32))
    if masking == "per-query":
        rows = np.array([[0, 1, 6, 2, 9], [3, 3, 0, 5, 1], [6, 2, 4, 0, 6]], dtype=np.int32)
        ours = d2l.masked_softmax(X, mx.np.array(rows))
        rows = np.minimum(rows, K)
    else:
        lens, causal, rows = _masks(masking)
        ours = d2l.masked_softmax(X, lens, mask=causal)
    want = _use_length_softmax(X, rows).asnumpy()
    assert (want[rows == 0] == 0).all() and (want.sum(-1)[rows > 0] > 0.99).all()
    np.testing.assert_allclose(ours.asnumpy(), want, atol=1e-5)


@pytest.mark.parametrize("masking", MASKINGS)
def test_dot_product_matches_batch_dot_and_use_length_softmax(masking):
    rng = np.random.default_rng(1)
    q, k, v = (mx.np.array(rng.normal(size=(B, n, d)).astype(np.float32)) for n, d in ((Q, 8), (K, 8), (K, 5)))
    lens, causal, rows = _masks(masking)
    attention = d2l.DotProductAttention()
    out = attention(q, k, v, lens, mask=causal)
    weights = _use_length_softmax(npx.batch_dot(q, k, transpose_b=True) / math.sqrt(8), rows)
    np.testing.assert_allclose(attention.attention_weights.asnumpy(), weights.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(out.asnumpy(), npx.batch_dot(weights, v).asnumpy(), atol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masking", MASKINGS)
def test_multihead_matches_composite(masking, bias, hybridize):
    rng = np.random.default_rng(2)
    params = mha_weights(bias, rng, H)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=bias)
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    if hybridize:
        ours.hybridize()
        native.hybridize()
    q, k, v = (mx.np.array(rng.normal(size=(B, n, H)).astype(np.float32)) for n in (Q, K, K))
    lens, causal, rows = _masks(masking)
    out = ours(q, k, v, lens, mask=causal)
    want, weights = native(q, k, v, mx.np.array(np.repeat(rows, HEADS, axis=0)))   # (b * heads, q) lengths
    np.testing.assert_allclose(out.asnumpy(), want.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(ours.attention_weights.asnumpy(), weights.asnumpy().reshape(B, HEADS, Q, K),
                               atol=1e-5)


def test_row_lengths_repeat_each_sequence_per_head_and_query():
    np.testing.assert_array_equal(row_lengths([2, 5], heads=2, num_queries=3).asnumpy(),
                                  [[2, 2, 2], [2, 2, 2], [5, 5, 5], [5, 5, 5]])


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_layer_norm_matches_gluon_layer_norm(hybridize):
    rng = np.random.default_rng(3)
    gamma, beta = rng.normal(size=H).astype(np.float32), rng.normal(size=H).astype(np.float32)
    ours = d2l.LayerNorm(H)
    d2l.set_params(ours, {"gamma": gamma, "beta": beta})
    native = mx.gluon.nn.LayerNorm(epsilon=1e-5, in_channels=H)
    native.initialize()
    native.gamma.set_data(mx.np.array(gamma))
    native.beta.set_data(mx.np.array(beta))
    if hybridize:
        ours.hybridize()
        native.hybridize()
    X = mx.np.array((rng.normal(size=(B, Q, H)) * 4 + 2).astype(np.float32))
    np.testing.assert_allclose(ours(X).asnumpy(), native(X).asnumpy(), atol=1e-5)


def _gru_params(rng, input_size, hidden, layers):
    names = ["W_xr", "W_xz", "W_xh", "W_hr", "W_hz", "W_hh", "b_r", "b_z", "b_xh", "b_hh"]
    return {f"l{i}.{n}": rng.uniform(-0.5, 0.5, (hidden,) if n.startswith("b") else
                                     (input_size if i == 0 and n.startswith("W_x") else hidden, hidden))
            .astype(np.float32) for i in range(layers) for n in names}


def _numpy_gru(params, X, state):
    """The canonical formulas of d2lattn.api.GRU, one step and one layer at a time, in float64."""
    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    last = []
    for i in range(len(state)):
        p = {n.split(".")[1]: v.astype(np.float64) for n, v in params.items() if n.startswith(f"l{i}.")}
        H, outputs = state[i], []
        for t in range(X.shape[1]):
            x = X[:, t]
            r = sigmoid(x @ p["W_xr"] + H @ p["W_hr"] + p["b_r"])
            z = sigmoid(x @ p["W_xz"] + H @ p["W_hz"] + p["b_z"])
            n = np.tanh(x @ p["W_xh"] + p["b_xh"] + r * (H @ p["W_hh"] + p["b_hh"]))
            H = (1 - z) * n + z * H
            outputs.append(H)
        X = np.stack(outputs, 1)
        last.append(H)
    return X, np.stack(last)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_gru_matches_the_canonical_formulas(hybridize):
    """Our GRU is a stack of Gluon's own rnn.GRU, so it is checked against the formulas the
    canonical parameters stand for, stepped through in NumPy."""
    rng = np.random.default_rng(4)
    params = _gru_params(rng, 3, 5, layers=2)
    gru = d2l.GRU(3, 5, num_layers=2)
    d2l.set_params(gru, params)
    if hybridize:
        gru.hybridize()
    X, state = rng.normal(size=(B, 6, 3)), rng.normal(size=(2, B, 5))
    out, last = gru(mx.np.array(X.astype(np.float32)), mx.np.array(state.astype(np.float32)), training=False)
    want_out, want_last = _numpy_gru(params, X, state)
    np.testing.assert_allclose(out.asnumpy(), want_out, atol=1e-5)
    np.testing.assert_allclose(last.asnumpy(), want_last, atol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_stacked_gru_matches_gluon_multilayer_gru(hybridize):
    """Without dropout, our stack of one-layer rnn.GRUs is Gluon's fused two-layer rnn.GRU."""
    rng = np.random.default_rng(5)
    ours = d2l.GRU(3, 5, num_layers=2)
    native = mx.gluon.rnn.GRU(5, num_layers=2, layout="NTC", input_size=3)
    native.initialize()
    for i in range(2):
        layer = getattr(ours, f"l{i}")
        for name in ("i2h_weight", "h2h_weight", "i2h_bias", "h2h_bias"):
            value = mx.np.array(rng.uniform(-0.5, 0.5, layer._reg_params[f"l0_{name}"].shape).astype(np.float32))
            layer._reg_params[f"l0_{name}"].set_data(value)
            native._reg_params[f"l{i}_{name}"].set_data(value)
    if hybridize:
        ours.hybridize()
        native.hybridize()
    X, state = (mx.np.array(rng.normal(size=s).astype(np.float32)) for s in ((B, 6, 3), (2, B, 5)))
    out, last = ours(X, state, training=False)
    want_out, (want_last,) = native(X, state)
    np.testing.assert_allclose(out.asnumpy(), want_out.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(last.asnumpy(), want_last.asnumpy(), atol=1e-5)


# --- modern attention and the decoder-only model -------------------------------------------
#
# MXNet 1.9 has no grouped-query attention, no attention with an additive score bias, no
# RMSNorm (npx.layer_norm removes the mean) and no rotary encoding, in Gluon or in npx. So
# these are checked against explicit float64 math, and where MXNet has the pieces against
# its own composite: npx.softmax(use_length=True) for masks that are prefixes of the keys,
# the Dense/batch_dot composite of benchmarks.bench_mxnet with key/value heads repeated for
# grouped-query attention, Gluon's Dense and Swish for SwiGLU.

HYBRIDIZE = pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])


def _softmax64(scores, keep):
    """Softmax over the kept keys in float64; a row with none kept is zeros."""
    e = np.where(keep, np.exp(np.where(keep, scores, -np.inf) - np.where(keep, scores, -np.inf).max(
        -1, keepdims=True, initial=-1e300)), 0.0)
    return e / np.maximum(e.sum(-1, keepdims=True), 1e-300)


def _attention64(q, k, v, keep, bias=0.0):
    """(weights, output) of softmax(q k^T / sqrt(d) + bias) over the kept keys, float64."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]) + bias
    weights = _softmax64(scores, keep)
    return weights, weights @ v


@pytest.mark.parametrize("offset", [-2, 0, 3])
def test_causal_mask_with_offset_matches_use_length_softmax(offset):
    """Query i sees keys 0 .. offset + i: a prefix of the keys, as use_length says it."""
    X = mx.np.array(np.random.default_rng(6).normal(size=(B, Q, K)).astype(np.float32))
    rows = np.clip(offset + np.arange(1, Q + 1), 0, K) * np.ones((B, 1), dtype=np.int32)   # (b, q)
    ours = d2l.masked_softmax(X, mask=d2l.causal_mask(Q, K, offset=offset))
    np.testing.assert_allclose(ours.asnumpy(), _use_length_softmax(X, rows.astype(np.int32)).asnumpy(), atol=1e-6)


@HYBRIDIZE
@pytest.mark.parametrize("masking", ["padding", "window"])
def test_score_bias_matches_use_length_softmax_and_float64_math(masking, hybridize):
    """Output, weights and the bias's gradient; the bias is added to the scaled scores before
    masking, so a masked key keeps weight 0 (and its bias gradient 0) whatever its bias."""
    rng = np.random.default_rng(7)
    q, k, v, bias, proj = (rng.normal(size=s) for s in ((B, Q, 8), (B, K, 8), (B, K, 5), (B, Q, K), (B, Q, 5)))
    bias[:, :, -1] = 50.0                                             # large, and masked where lengths end early
    attention = d2l.DotProductAttention()
    if hybridize:
        attention.hybridize()
    if masking == "padding":
        lens, mask, keep = mx.np.array(LENS), None, np.arange(K) < LENS[:, None, None]
    else:
        lens, mask = None, d2l.causal_mask(Q, K, offset=K - Q, window=2)
        i, j = K - Q + np.arange(Q)[:, None], np.arange(K)                 # query and key positions
        keep = (j <= i) & (i - j < 2)                                      # itself and the one before
    b = mx.np.array(bias.astype(np.float32))
    b.attach_grad()
    with mx.autograd.record():
        out = attention(*(mx.np.array(x.astype(np.float32)) for x in (q, k, v)), lens, mask=mask, score_bias=b)
        objective = (out * mx.np.array(proj.astype(np.float32))).sum()
    objective.backward()
    weights, want = _attention64(q, k, v, keep, bias)
    grad_weights = proj @ np.swapaxes(v, -1, -2)                       # d objective / d weights
    grad_bias = weights * (grad_weights - (grad_weights * weights).sum(-1, keepdims=True))
    np.testing.assert_allclose(out.asnumpy(), want, atol=1e-5)
    np.testing.assert_allclose(attention.attention_weights.asnumpy(), weights, atol=1e-5)
    np.testing.assert_allclose(b.grad.asnumpy(), grad_bias, atol=1e-5)
    if masking == "padding":                                           # a prefix: MXNet's own masked softmax too
        scores = npx.batch_dot(mx.np.array(q.astype(np.float32)), mx.np.array(k.astype(np.float32)),
                               transpose_b=True) / math.sqrt(8) + mx.np.array(bias.astype(np.float32))
        rows = np.repeat(LENS[:, None], Q, axis=1).astype(np.int32)
        np.testing.assert_allclose(attention.attention_weights.asnumpy(),
                                   _use_length_softmax(scores, rows).asnumpy(), atol=1e-5)


def _gqa64(params, q, k, v, keep, heads, kv_heads, bias=0.0):
    """Grouped-query attention head by head in float64: query head h uses key/value head
    h // (heads // kv_heads). -> (output (b, q, hidden), weights (b, heads, q, k))."""
    p = {n: x.astype(np.float64) for n, x in params.items()}
    dh, group = p["W_q"].shape[1] // heads, heads // kv_heads
    Q_, K_, V_ = (x @ p[f"W_{n}"] + p.get(f"b_{n}", 0.0) for n, x in (("q", q), ("k", k), ("v", v)))
    outs, weights = [], []
    for h in range(heads):
        g = h // group
        w, o = _attention64(Q_[..., h * dh:(h + 1) * dh], K_[..., g * dh:(g + 1) * dh], V_[..., g * dh:(g + 1) * dh],
                            keep, np.broadcast_to(bias, (len(q), heads, q.shape[1], k.shape[1]))[:, h])
        outs.append(o)
        weights.append(w)
    return np.concatenate(outs, -1) @ p["W_o"] + p.get("b_o", 0.0), np.stack(weights, 1)


@HYBRIDIZE
@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("masking", MASKINGS)
def test_grouped_query_matches_composite_and_float64_math(masking, kv_heads, hybridize):
    rng = np.random.default_rng(8)
    params = gqa_weights(mha_weights(True, rng, H), kv_heads, hidden=H, heads=HEADS)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=True, num_kv_heads=kv_heads)
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS, kv_heads=kv_heads)
    if hybridize:
        ours.hybridize()
        native.hybridize()
    q, k, v = (rng.normal(size=(B, n, H)).astype(np.float32) for n in (Q, K, K))
    lens, causal, rows = _masks(masking)
    out = ours(*(mx.np.array(x) for x in (q, k, v)), lens, mask=causal)
    want, weights = native(*(mx.np.array(x) for x in (q, k, v)), mx.np.array(np.repeat(rows, HEADS, axis=0)))
    np.testing.assert_allclose(out.asnumpy(), want.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(ours.attention_weights.asnumpy(), weights.asnumpy().reshape(B, HEADS, Q, K), atol=1e-5)
    want64, weights64 = _gqa64(params, q, k, v, np.arange(K) < rows[..., None], HEADS, kv_heads)
    np.testing.assert_allclose(out.asnumpy(), want64, atol=1e-5)
    np.testing.assert_allclose(ours.attention_weights.asnumpy(), weights64, atol=1e-5)


@HYBRIDIZE
def test_grouped_query_with_alibi_bias_matches_float64_math(hybridize):
    rng = np.random.default_rng(9)
    params = gqa_weights(mha_weights(False, rng, H), 2, hidden=H, heads=HEADS)
    ours = d2l.MultiHeadAttention(H, HEADS, num_kv_heads=2)
    d2l.set_params(ours, params)
    if hybridize:
        ours.hybridize()
    X = rng.normal(size=(B, K, H)).astype(np.float32)
    bias = d2l.alibi_bias(HEADS, K)                                    # (heads, k, k)
    out = ours(mx.np.array(X), mx.np.array(X), mx.np.array(X), mask=d2l.causal_mask(K), score_bias=bias)
    want, weights = _gqa64(params, X, X, X, np.tril(np.ones((K, K), bool)), HEADS, 2, bias.asnumpy())
    np.testing.assert_allclose(out.asnumpy(), want, atol=1e-5)
    np.testing.assert_allclose(ours.attention_weights.asnumpy(), weights, atol=1e-5)


@HYBRIDIZE
@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_rms_norm_matches_float64_math(eps, hybridize):
    """At a scale where eps matters (mean square ~ 1e-4), with a random gamma."""
    rng = np.random.default_rng(10)
    gamma, X = rng.normal(size=H).astype(np.float32), (rng.normal(size=(B, Q, H)) * 1e-2).astype(np.float32)
    ours = d2l.RMSNorm(H, eps=eps)
    d2l.set_params(ours, {"gamma": gamma})
    if hybridize:
        ours.hybridize()
    X64 = X.astype(np.float64)
    want = X64 / np.sqrt((X64 ** 2).mean(-1, keepdims=True) + eps) * gamma
    np.testing.assert_allclose(ours(mx.np.array(X)).asnumpy(), want, rtol=1e-5, atol=1e-5)


@HYBRIDIZE
def test_swiglu_matches_gluon_dense_and_swish(hybridize):
    rng = np.random.default_rng(11)
    params = {n: rng.normal(size=s).astype(np.float32) for n, s in
              (("W_gate", (H, 24)), ("W_up", (H, 24)), ("W_down", (24, 5)))}
    ours = d2l.SwiGLUFFN(H, 24, 5)
    d2l.set_params(ours, params)
    dense = {n: mx.gluon.nn.Dense(w.shape[1], use_bias=False, flatten=False, in_units=w.shape[0])
             for n, w in params.items()}
    swish = mx.gluon.nn.Swish()                                        # x * sigmoid(beta x), beta = 1: silu
    for n, layer in dense.items():
        layer.initialize()
        layer.weight.set_data(mx.np.array(params[n].T))
        if hybridize:
            layer.hybridize()
    if hybridize:
        ours.hybridize()
        swish.hybridize()
    X = mx.np.array(rng.normal(size=(B, Q, H)).astype(np.float32))
    want = dense["W_down"](swish(dense["W_gate"](X)) * dense["W_up"](X))
    np.testing.assert_allclose(ours(X).asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-4)


@HYBRIDIZE
@pytest.mark.parametrize("offset", [0, 5])
def test_rotary_encoding_matches_float64_rotation_in_both_conventions(offset, hybridize):
    """Split halves rotate (x[i], x[i + d/2]); interleaved rotate (x[2i], x[2i + 1]): the same
    rotation on features reordered evens-then-odds (the permutation a converted checkpoint
    applies to its W_q, W_k columns)."""
    d, T = 8, 6
    X = np.random.default_rng(12).normal(size=(B, 2, T, d)).astype(np.float32)
    halves, interleaved = d2l.RotaryPositionalEncoding(d), d2l.RotaryPositionalEncoding(d, interleaved=True)
    if hybridize:
        halves.hybridize()
        interleaved.hybridize()
    angles = (offset + np.arange(T))[:, None] * 10000.0 ** (-2 * np.arange(d // 2) / d)    # (T, d/2)
    a, b = X[..., : d // 2].astype(np.float64), X[..., d // 2:].astype(np.float64)
    want = np.concatenate([a * np.cos(angles) - b * np.sin(angles), a * np.sin(angles) + b * np.cos(angles)], -1)
    np.testing.assert_allclose(halves(mx.np.array(X), offset=offset).asnumpy(), want, atol=1e-5)
    order = np.r_[0:d:2, 1:d:2]                                        # evens, then odds
    got = interleaved(mx.np.array(X[..., np.argsort(order)]), offset=offset).asnumpy()[..., order]
    np.testing.assert_allclose(got, halves(mx.np.array(X), offset=offset).asnumpy(), atol=1e-5)


@HYBRIDIZE
def test_causal_self_attention_without_rope_equals_the_causal_composite(hybridize):
    """With all heads, no window and no rotary encoding, CausalSelfAttention is multi-head
    attention under a causal mask: the composite with use_length lengths 1, 2, ..., T."""
    rng = np.random.default_rng(13)
    params = mha_weights(False, rng, H)
    ours = d2l.CausalSelfAttention(H, HEADS, rope_base=None)
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    if hybridize:
        ours.hybridize()
        native.hybridize()
    X = mx.np.array(rng.normal(size=(B, K, H)).astype(np.float32))
    out, (keys, values) = ours(X)
    want, weights = native(X, X, X, mx.np.array(np.tile(np.arange(1, K + 1, dtype=np.int32), (B * HEADS, 1))))
    np.testing.assert_allclose(out.asnumpy(), want.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(ours.attention_weights.asnumpy(), weights.asnumpy().reshape(B, HEADS, K, K), atol=1e-5)
    assert keys.shape == values.shape == (B, HEADS, K, H // HEADS)


def test_hybridized_graphs_serve_every_cache_length():
    """A hybridized block traces its graph on its first call (an empty cache); the same graph
    then runs every later piece. Pieces of a sequence through the hybridized CausalSelfAttention,
    GatedDeltaNet (its graph takes each piece as one chunk, its state as an input) and TransformerLM,
    softmax or hybrid, give the imperative full pass (GatedDeltaNet's in chunks of 2)."""
    rng = np.random.default_rng(14)
    attention = d2l.CausalSelfAttention(H, HEADS, num_kv_heads=2, window=3)
    linear = d2l.GatedDeltaNet(H, HEADS, chunk_size=2)
    lm = d2l.TransformerLM(11, H, HEADS, 2, 24, num_kv_heads=1, window=4)
    hybrid = d2l.TransformerLM(11, H, HEADS, 3, 24, attention=["gated_deltanet", "mha", "gated_deltanet"],
                               gated_deltanet={"chunk_size": 2})
    X = mx.np.array(rng.normal(size=(B, 6, H)).astype(np.float32))
    tokens = mx.np.array(rng.integers(0, 11, (B, 6)).astype(np.int32))
    for block, inputs in ((attention, X), (linear, X), (lm, tokens), (hybrid, tokens)):
        full, _ = block(inputs, training=False)
        block.hybridize()
        outs, cache, start = [], None, 0
        for size in (2, 1, 3):
            out, cache = block(inputs[:, start:start + size], cache=cache, training=False)
            outs.append(out.asnumpy())
            start += size
        np.testing.assert_allclose(np.concatenate(outs, 1), full.asnumpy(), atol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_dot_product_matches_float64_math_with_distinct_keys_and_values(hybridize):
    q, k, v, lens, causal, keep, want = native.float64_case()
    attention = d2l.DotProductAttention()
    if hybridize:
        attention.hybridize()
    out = attention(*(mx.np.array(x) for x in (q, k, v)), mx.np.array(lens, dtype="int32"), mask=mx.np.array(causal))
    np.testing.assert_allclose(out.asnumpy(), want, atol=1e-5)


def test_one_hybridized_block_takes_plain_length_and_mask_calls():
    """README: lengths and masks are merged into one keep mask before the graph, so the same
    hybridized block serves plain, length and mask calls, each as the imperative block does."""
    rng = np.random.default_rng(9)
    q, k, v = (mx.np.array(rng.normal(size=(2, n, 4)).astype(np.float32)) for n in (3, 5, 5))
    lens, mask = mx.np.array([2, 5], dtype="int32"), mx.np.array(rng.random((2, 3, 5)) < 0.7)
    imperative, hybrid = d2l.DotProductAttention(), d2l.DotProductAttention()
    hybrid.hybridize()
    for call in ({}, {"valid_lens": lens}, {"mask": mask}, {"valid_lens": lens, "mask": mask}, {}):
        np.testing.assert_allclose(hybrid(q, k, v, **call).asnumpy(), imperative(q, k, v, **call).asnumpy(), atol=1e-6)
        np.testing.assert_allclose(hybrid.attention_weights.asnumpy(), imperative.attention_weights.asnumpy(),
                                   atol=1e-6)
    plain = imperative(q, k, v).asnumpy()
    assert not np.allclose(imperative(q, k, v, valid_lens=lens).asnumpy(), plain)  # the lengths did mask


class _Graph(mx.gluon.nn.HybridBlock):
    """A user's HybridBlock whose graph calls `fn(block, *inputs)`."""

    def __init__(self, block, fn):
        super().__init__()
        self.block, self.fn = block, fn

    def hybrid_forward(self, F, *inputs):
        return self.fn(self.block, *inputs)


def test_blocks_compose_in_a_users_hybridized_sequential():
    """README: an encoder as a Gluon user stacks one, positions then blocks, hybridized as a whole,
    gives the imperative stack's outputs (the blocks make their masks from positions there)."""
    X = mx.np.array(np.random.default_rng(10).normal(size=(2, 5, 8)).astype(np.float32))
    net = mx.gluon.nn.HybridSequential()
    net.add(d2l.PositionalEncoding(8), d2l.TransformerEncoderBlock(8, 12, 2), d2l.TransformerEncoderBlock(8, 12, 2))
    want = net(X).asnumpy()
    net.hybridize()
    for _ in range(2):  # the traced call, then the cached graph
        np.testing.assert_allclose(net(X).asnumpy(), want, atol=1e-6)
    assert net[1].attention.attention_weights is None  # the user's graph does not hand them out


def test_a_hybrid_language_model_composes_in_a_users_hybridized_graph():
    """A TransformerLM with GatedDeltaNet blocks traced inside a user's graph, where its blocks start
    from zero states and make their masks from positions, gives the imperative logits."""
    tokens = mx.np.array(np.random.default_rng(11).integers(0, 11, (2, 5)).astype(np.int32))
    lm = d2l.TransformerLM(11, 8, 2, 2, 12, attention=["gated_deltanet", "mha"], gated_deltanet={"conv_size": 3})
    want = lm(tokens, training=False)[0].asnumpy()
    graph = _Graph(lm, lambda block, tokens: block(tokens)[0])
    graph.hybridize()
    for _ in range(2):  # the traced call, then the cached graph
        np.testing.assert_allclose(graph(tokens).asnumpy(), want, atol=1e-5)


@pytest.mark.parametrize("make, call", [
    (lambda: d2l.TransformerEncoderBlock(8, 12, 2), lambda block, X: block(X, mx.sym.np.ones((2,)))),
    (lambda: d2l.TransformerDecoderBlock(8, 12, 2), lambda block, X: block(X, X, mx.sym.np.ones((2,)))),
    (lambda: d2l.TransformerDecoderBlock(8, 12, 2), lambda block, X: block.step(X, X, mx.sym.np.ones((2,)))),
    (lambda: d2l.MultiHeadAttention(8, 2), lambda block, X: block(X, X, X, mx.sym.np.ones((2,)))),
    (lambda: d2l.CausalSelfAttention(8, 2), lambda block, X: block(X, cache=(X, X))[0]),
    (lambda: d2l.GatedDeltaNet(8, 2), lambda block, X: block(X, cache=(X, X))[0]),
], ids=["encoder-lens", "decoder-lens", "decoder-step-lens", "mha-lens", "csa-cache", "gdn-cache"])
def test_lengths_or_a_cache_inside_a_users_graph_raise_a_type_error(make, call):
    """README: masks from lengths or a cache need shapes, which a graph being traced lacks."""
    graph = _Graph(make(), call)
    graph.hybridize()
    with pytest.raises(TypeError, match="inside a graph being traced|cannot enter a hybridized graph"):
        graph(mx.np.ones((2, 5, 8)))
