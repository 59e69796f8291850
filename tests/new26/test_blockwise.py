"""Blockwise attention does the work it promises (never more than q * block_size scores at once),
and merge_attention on its edge cases, held to NumPy computations written here."""

import math
import sys

import numpy as np
import pytest

Q, K, D, BLOCK = 5, 23, 4, 4  # shapes no other test uses: a compiled backend traces them afresh


def dense_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v and the log-sum-exp of each row, in float64."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])        # (..., q, k)
    top = scores.max(-1, keepdims=True)
    w = np.exp(scores - top)
    return (w / w.sum(-1, keepdims=True)) @ v, (top + np.log(w.sum(-1, keepdims=True)))[..., 0]


def test_blockwise_attention_scores_one_block_at_a_time(d2l, adapter, monkeypatch):
    """Every score matrix it builds is (..., q, at most block_size), and together they cover the keys."""
    module = sys.modules[d2l.blockwise_attention.__module__]
    seen = []

    def recording(*args, **kwargs):
        scores = original(*args, **kwargs)
        seen.append(tuple(scores.shape))
        return scores

    original = module._block_scores
    monkeypatch.setattr(module, "_block_scores", recording)
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, Q, D)), rng.normal(size=(2, K, D)), rng.normal(size=(2, K, 3))
    with adapter.eagerly():
        out = d2l.blockwise_attention(d2l.tensor(q), d2l.tensor(k), d2l.tensor(v), block_size=BLOCK)
    np.testing.assert_allclose(d2l.to_numpy(out), dense_attention(q, k, v)[0], atol=1e-5)
    assert seen and all(s[:-1] == (2, Q) and s[-1] <= BLOCK for s in seen), seen
    assert sum(s[-1] for s in seen) >= K  # every key scored, block by block


def merge(d2l, outputs, lses):
    out, lse = d2l.merge_attention([d2l.tensor(o) for o in outputs], [d2l.tensor(s) for s in lses])
    return d2l.to_numpy(out), d2l.to_numpy(lse)


def test_merge_a_single_part_is_that_part(d2l):
    rng = np.random.default_rng(1)
    o, s = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3)) * 50
    s[0, 1] = -np.inf
    o[0, 1] = 0.0                                                     # an empty row: zeros, lse -inf
    out, lse = merge(d2l, [o], [s])
    np.testing.assert_allclose(out, o, atol=1e-6)
    np.testing.assert_allclose(lse, s, rtol=1e-6)


def test_merge_ignores_a_part_whose_every_row_is_empty(d2l):
    rng = np.random.default_rng(2)
    o, s = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3))
    empty_out, empty_lse = np.full((2, 3, 4), 1e4), np.full((2, 3), -np.inf)  # whatever it holds has weight 0
    for parts in ([o, empty_out], [empty_out, o]):
        lses = [s, empty_lse] if parts[0] is o else [empty_lse, s]
        out, lse = merge(d2l, parts, lses)
        np.testing.assert_allclose(out, o, atol=1e-5)
        np.testing.assert_allclose(lse, s, rtol=1e-6)
    out, lse = merge(d2l, [empty_out, empty_out], [empty_lse, empty_lse])  # empty everywhere: zeros, -inf
    assert np.array_equal(out, np.zeros_like(out)) and np.all(np.isneginf(lse))


@pytest.mark.parametrize("gap", [150.0, 1.0])
def test_merge_parts_of_very_different_magnitude(d2l, gap):
    """Large log-sum-exps (exp(200) overflows float32) and a gap beyond 100 between the parts."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    sa = 200.0 + rng.normal(size=(2, 3))
    sb = sa - gap
    out, lse = merge(d2l, [a, b], [sa, sb])
    wb = 1 / (1 + np.exp(gap))                                        # the smaller part's share, in float64
    np.testing.assert_allclose(out, (1 - wb) * a + wb * b, atol=1e-5)
    np.testing.assert_allclose(lse, sa + np.log1p(np.exp(-gap)), rtol=1e-6)


def test_merged_blocks_equal_dense_attention_on_keys_split_unevenly(d2l):
    """Three parts of 1, 2 and 20 keys, merged, against dense attention computed in NumPy."""
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(2, Q, D)) * 3, rng.normal(size=(2, K, D)) * 3, rng.normal(size=(2, K, 3))
    parts = [(0, 1), (1, 3), (3, K)]
    outs, lses = [], []
    for start, stop in parts:
        o, s = d2l.blockwise_attention(d2l.tensor(q), d2l.tensor(k[:, start:stop]), d2l.tensor(v[:, start:stop]),
                                       block_size=BLOCK, return_lse=True)
        outs.append(d2l.to_numpy(o))
        lses.append(d2l.to_numpy(s))
    out, lse = merge(d2l, outs, lses)
    expected_out, expected_lse = dense_attention(q, k, v)
    np.testing.assert_allclose(out, expected_out, atol=1e-5)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-5)
