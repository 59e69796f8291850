"""blockwise: blockwise_attention and merge_attention on the backend under test.

Blockwise (online-softmax) attention is dense attention computed a block of keys at a time.
Beyond the harness (tests/cases.py): blockwise_attention equals DotProductAttention, forward and
gradients (eager and compiled), for random block sizes; random shard splits of the keys, each
attended to separately and combined with merge_attention, equal the whole (property tests); bad
input. The NumPy reference is held to the dense formula written out below (in every session).
"""

import functools
import math
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from d2lattn import numpy as reference
from tests.strategies import PROFILE
from tests.support import bad_input_test, ints, t


def dense(queries, keys, values, valid_lens=None, causal=False, offset=0):
    """softmax(Q K^T / sqrt(d)) V over the kept keys, and each row's log-sum-exp, in float64."""
    scores = queries @ np.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (..., q, k)
    keep = np.ones(scores.shape, dtype=bool)
    if valid_lens is not None:
        lens = np.asarray(valid_lens)  # (b,) or (b, q): index the first axis (and the queries)
        lens = lens.reshape(lens.shape[:1] + (1,) * (scores.ndim - lens.ndim - 1) + lens.shape[1:] + (1,))
        keep &= np.arange(scores.shape[-1]) < lens
    if causal:
        keep &= np.arange(scores.shape[-1]) <= offset + np.arange(scores.shape[-2])[:, None]
    top = np.where(keep, scores, -np.inf).max(-1, keepdims=True)                # (..., q, 1)
    weights = np.where(keep, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)  # (..., q, k)
    total = weights.sum(-1, keepdims=True)                                      # (..., q, 1)
    out = weights / np.where(total > 0, total, 1) @ values                       # (..., q, dv)
    with np.errstate(divide="ignore"):
        lse = np.log(np.where(keep, np.exp(scores), 0).sum(-1))                  # (..., q), -inf when empty
    return out, lse


def causal_keep(q, k, offset):
    """causal_mask(q, k, offset=offset) as a NumPy array: key j is kept for query i iff j <= offset + i."""
    return np.arange(k) <= offset + np.arange(q)[:, None]


def draw_call(rng, heads=False, sizes=None):
    """Random inputs (of `sizes` (b, q, k, d, dv) if given), lengths ((b,), (b, q) or None, 0 and beyond
    the keys included), causal, offset."""
    b, q, k, d, dv = sizes or (rng.integers(1, 3), rng.integers(1, 6), rng.integers(1, 10), rng.integers(1, 5),
                               rng.integers(1, 4))
    lead = (b, 2) if heads else (b,)
    inputs = [rng.normal(size=(*lead, q, d)), rng.normal(size=(*lead, k, d)), rng.normal(size=(*lead, k, dv))]
    lens = [None, rng.integers(0, k + 2, size=b), rng.integers(0, k + 2, size=(b, q))][rng.integers(3)]
    causal = bool(rng.integers(2))
    offset = int(rng.integers(-q, k + 1)) if causal else 0
    return inputs, None if lens is None else lens.astype(np.int32), causal, offset


def test_reference_is_the_dense_formula():
    """The reference (which the harness holds every framework to) against the formula above."""
    rng = np.random.default_rng(0)
    for n in range(60):
        inputs, lens, causal, offset = draw_call(rng, heads=n % 2 == 1)
        out, lse = reference.blockwise_attention(*inputs, lens, causal=causal, offset=offset,
                                           block_size=int(rng.integers(1, 12)), return_lse=True)
        want_out, want_lse = dense(*inputs, lens, causal, offset)
        np.testing.assert_allclose(out, want_out, atol=1e-12)
        np.testing.assert_array_equal(np.isinf(lse), np.isinf(want_lse))
        np.testing.assert_allclose(lse[np.isfinite(lse)], want_lse[np.isfinite(want_lse)], atol=1e-12)


COMPILED = pytest.param(True, marks=pytest.mark.needs("compiled", "compiled blockwise_attention"))


@pytest.mark.parametrize("compiled", [False, COMPILED], ids=["eager", "compiled"])
@pytest.mark.parametrize("seed", range(6))
def test_equals_dot_product_attention(d2l, seed, compiled):
    """Forward and gradients of a random projection, against the backend's own dense attention."""
    rng = np.random.default_rng(seed)
    inputs, lens, causal, offset = draw_call(rng, heads=seed % 2 == 1)
    q, k = inputs[0].shape[-2], inputs[1].shape[-2]
    block_size = int(rng.integers(1, k + 3))
    projection = rng.normal(size=inputs[0].shape[:-1] + inputs[2].shape[-1:])
    blockwise = functools.partial(d2l.blockwise_attention, causal=causal, offset=offset, block_size=block_size)
    got, got_grads, _ = d2l.value_and_grads(blockwise, inputs, projection, compiled=compiled, valid_lens=lens)
    mask = causal_keep(q, k, offset) if causal else None
    want, want_grads, _ = d2l.value_and_grads(d2l.DotProductAttention(), inputs, projection, compiled=compiled,
                                              valid_lens=lens, mask=mask, training=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_lse_gradient_and_empty_rows(d2l):
    """The log-sum-exp is differentiable too (d lse / d scores = the weights); a row with nothing to
    attend to is zeros with lse = -inf, and its gradients are zero, never NaN."""
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6, 2))]
    lens = np.array([0, 5], dtype=np.int32)            # sequence 0: nothing; sequence 1, query 0: nothing (offset -1)
    projections = [rng.normal(size=(2, 4, 2)), rng.normal(size=(2, 4))]
    blockwise = functools.partial(d2l.blockwise_attention, causal=True, offset=-1, block_size=4, return_lse=True)
    (out, lse), grads, _ = d2l.value_and_grads(blockwise, inputs, projections, valid_lens=lens)
    want_out, want_lse = dense(*inputs, lens, True, -1)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    assert np.isneginf(lse[0]).all() and np.isneginf(lse[1, 0]) and np.isfinite(lse[1, 1:]).all()
    np.testing.assert_allclose(lse[1, 1:], want_lse[1, 1:], atol=1e-5)
    assert not out[0].any() and all(np.isfinite(g).all() for g in grads)
    assert not grads[0][0].any() and not grads[1][0].any() and not grads[2][0].any()
    # d/d inputs of sum(lse * p) by central differences of the dense formula, on the live rows
    live = np.isfinite(want_lse)

    def objective(*xs):
        out, lse = dense(*xs, lens, True, -1)
        return np.sum(out * projections[0]) + np.sum(np.where(live, lse, 0) * projections[1])

    for x, g in zip(inputs, grads):
        numeric = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            saved = x[i]
            x[i] = saved + 1e-6
            up = objective(*inputs)
            x[i] = saved - 1e-6
            down = objective(*inputs)
            x[i], numeric[i] = saved, (up - down) / 2e-6
        np.testing.assert_allclose(g, numeric, atol=1e-4)


# (b, q, k, d, dv): a few shapes, as in tests/strategies.py, with one query and one key, more queries
# than keys and fewer, features of size 1; the shards' lengths and the block sizes still vary.
SHARDED_SIZES = [(1, 1, 1, 1, 1), (2, 5, 9, 4, 3), (1, 4, 2, 2, 1), (2, 3, 7, 1, 2)]


@st.composite
def sharded_calls(draw):
    """A random call, a block size and random cut points that split the keys into shards."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = draw(st.sampled_from(SHARDED_SIZES))
    inputs, lens, causal, offset = draw_call(rng, heads=draw(st.booleans()), sizes=sizes)
    k = sizes[2]
    cuts = sorted(draw(st.lists(st.integers(0, k), max_size=3)))
    return inputs, lens, causal, offset, draw(st.sampled_from([1, 2, 4, k + 2])), [0, *cuts, k]


@PROFILE
@given(call=sharded_calls())
def test_shards_merged_equal_the_whole(d2l, call):
    """Attention over every shard of the keys (an empty shard included), merged, is attention over all:
    a shard starting at key s sees lengths shortened by s and the causal offset lowered by s."""
    inputs, lens, causal, offset, block_size, bounds = call
    queries, keys, values = (d2l.tensor(x) for x in inputs)
    parts = []
    for start, stop in zip(bounds, bounds[1:]):
        shard_lens = None if lens is None else d2l.tensor(np.maximum(lens - start, 0).astype(np.int32))
        parts.append(d2l.blockwise_attention(queries, keys[..., start:stop, :], values[..., start:stop, :], shard_lens,
                                             causal=causal, offset=offset - start, block_size=block_size,
                                             return_lse=True))
    out, lse = d2l.merge_attention([o for o, _ in parts], [s for _, s in parts])
    whole = d2l.blockwise_attention(queries, keys, values, None if lens is None else d2l.tensor(lens), causal=causal,
                                    offset=offset, block_size=block_size, return_lse=True)
    want_out, want_lse = dense(*inputs, lens, causal, offset)
    for got_out, got_lse in ((out, lse), whole):
        got_out, got_lse = d2l.to_numpy(got_out), d2l.to_numpy(got_lse)
        np.testing.assert_allclose(got_out, want_out, atol=1e-5)
        np.testing.assert_array_equal(np.isneginf(got_lse), np.isneginf(want_lse))
        np.testing.assert_allclose(got_lse[np.isfinite(got_lse)], want_lse[np.isfinite(want_lse)], atol=1e-5)


# --- bad input --------------------------------------------------------------------------------


def block(d2l, q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), **kwargs):
    return d2l.blockwise_attention(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


BAD_INPUT = {
    "block size zero": (lambda d2l: block(d2l, block_size=0), ValueError,
                        r"block_size must be a positive integer, got 0"),
    "block size float": (lambda d2l: block(d2l, block_size=2.0), ValueError,
                         r"block_size must be a positive integer, got 2.0"),
    "block offset float": (lambda d2l: block(d2l, causal=True, offset=1.5), ValueError,
                           r"offset must be an integer, got 1.5"),
    "block feature sizes": (lambda d2l: block(d2l, k=(2, 5, 3)), ValueError,
                            r"queries and keys must have the same feature size \(last axis\), got queries \(2, 3, 4\) "
                            r"and keys \(2, 5, 3\)"),
    "block leading axes": (lambda d2l: block(d2l, k=(2, 2, 5, 4), v=(2, 2, 5, 6), q=(2, 3, 3, 4)), ValueError,
                           r"queries, keys and values must have the same leading axes"),
    "block rank": (lambda d2l: block(d2l, q=(3, 4)), ValueError,
                   r"queries, keys and values must have the same number of axes, at least 3"),
    "block keys and values": (lambda d2l: block(d2l, v=(2, 4, 6)), ValueError,
                              r"keys and values must have the same number of positions \(axis -2\)"),
    "block lens shape": (lambda d2l: block(d2l, valid_lens=ints(d2l, 1, 2, 3)), ValueError,
                         r"valid_lens must have shape \(batch,\) = \(2,\) or \(batch, queries\) = \(2, 3\)"),
    "block lens negative": (lambda d2l: block(d2l, valid_lens=ints(d2l, 2, -1)), ValueError,
                            r"valid_lens must be >= 0, got a length of -1"),
    "merge counts": (lambda d2l: d2l.merge_attention([t(d2l, 2, 3, 6)] * 2, [t(d2l, 2, 3)]), ValueError,
                     r"merge_attention needs one lse per output and at least one part, got 2 outputs and 1 lses"),
    "merge nothing": (lambda d2l: d2l.merge_attention([], []), ValueError,
                      r"merge_attention needs one lse per output and at least one part, got 0 outputs and 0 lses"),
    "merge lse shape": (lambda d2l: d2l.merge_attention([t(d2l, 2, 3, 6)] * 2, [t(d2l, 2, 3), t(d2l, 2, 4)]),
                        ValueError, r"merge_attention: outputs must share one shape \(\.\.\., q, dv\) and lses be "
                        r"\(\.\.\., q\), got outputs \(2, 3, 6\) and lses \(2, 4\)"),
    "merge output shapes": (lambda d2l: d2l.merge_attention([t(d2l, 2, 3, 6), t(d2l, 2, 3, 5)], [t(d2l, 2, 3)] * 2),
                            ValueError, r"merge_attention: outputs must share one shape"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- the work it does (one block of scores at a time) and merge_attention's edge cases ------------
# Blockwise attention does the work it promises (never more than q * block_size scores at once),
# and merge_attention on its edge cases, held to NumPy computations written here.


Q, K, D, BLOCK = 5, 23, 4, 4  # shapes no other test uses: a compiled backend traces them afresh


def dense_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v and the log-sum-exp of each row, in float64."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])        # (..., q, k)
    top = scores.max(-1, keepdims=True)
    w = np.exp(scores - top)
    return (w / w.sum(-1, keepdims=True)) @ v, (top + np.log(w.sum(-1, keepdims=True)))[..., 0]


def test_blockwise_attention_scores_one_tile_at_a_time(d2l, adapter, monkeypatch):
    """Every score matrix it builds is (batch, at most block_size queries, at most max(q, block_size) keys)
    (neighbouring tiles may be scored together), and together they cover every query and key. A backend
    that batches query blocks with the same tiles (PyTorch: a window's) has an axis for them, here of
    size 1: without a mask no two query blocks see the same keys relative to their rows."""
    module = sys.modules[d2l.flex_attention.__module__]
    seen = []

    def recording(*args, **kwargs):
        scores = original(*args, **kwargs)
        seen.append(tuple(scores.shape))
        return scores

    original = module._tile_scores
    monkeypatch.setattr(module, "_tile_scores", recording)
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, Q, D)), rng.normal(size=(2, K, D)), rng.normal(size=(2, K, 3))
    with adapter.eagerly():
        out = d2l.blockwise_attention(d2l.tensor(q), d2l.tensor(k), d2l.tensor(v), block_size=BLOCK)
    np.testing.assert_allclose(d2l.to_numpy(out), dense_attention(q, k, v)[0], atol=1e-5)
    assert seen and all(s[0] == 2 and set(s[1:-2]) <= {1} and s[-2] <= BLOCK and s[-1] <= max(Q, BLOCK)
                        for s in seen), seen
    assert sum(s[-2] * s[-1] for s in seen) >= Q * K  # every query scored against every key, tile by tile


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
