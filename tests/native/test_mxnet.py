"""MXNet's own attention pieces against ours, with the same weights.

MXNet 1.9 has no attention layer on its NumPy interface; its own masked
attention is npx.softmax(..., length=..., use_length=True), which masks the
keys of each row by a length and gives a row of length 0 zeros, as ours does.
A causal mask is lengths 1, 2, ..., q there. The composite
(benchmarks.bench_mxnet.NativeMHA) builds multi-head attention from Gluon Dense
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

from benchmarks.bench_mxnet import native_mha, row_lengths
from benchmarks.common import mha_weights
from d2lattn import mxnet as d2l

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
