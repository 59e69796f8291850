"""MXNet's own attention pieces against ours, with the same weights.

MXNet 1.9 has no attention layer on its NumPy interface; its own masked
attention is npx.softmax(..., length=..., use_length=True), which masks the
keys of each row by a length and gives a row of length 0 zeros, as ours does.
A causal mask is lengths 1, 2, ..., q there. The composite
(benchmarks.bench_mxnet.NativeMHA) builds multi-head attention from Gluon Dense
layers, npx.batch_dot and that softmax.
"""

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import npx

from benchmarks.bench_mxnet import native_mha, row_lengths
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


def _mha_params(rng, bias):
    scale = 1 / np.sqrt(H)
    params = {f"W_{x}": rng.uniform(-scale, scale, (H, H)).astype(np.float32) for x in "qkvo"}
    if bias:
        params.update({f"b_{x}": rng.uniform(-scale, scale, H).astype(np.float32) for x in "qkvo"})
    return params


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
    params = _mha_params(rng, bias)
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
