"""flex: flex_attention, block_mask and the ready-made mods on the backend under test.

Beyond the harness (tests/cases.py): the NumPy reference against dense attention written out below;
the backend's block_mask against a brute-force classification of every tile (block edges included);
flex_attention against dense attention with the same mask and bias for random mods, block sizes and
lengths (a property test over a few shapes), gradients included; the tiles a mask empties are not
computed, forward or backward (keys poisoned with NaN there leave the rows that skip them finite);
full tiles do not evaluate the mask; a BlockMask is reused and checked; bad input.
"""

import dataclasses
import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import _tiles
from d2lattn import numpy as reference
from tests.cases import Mod
from tests.harness import built
from tests.strategies import PROFILE
from tests.support import bad_input_test, t

B, H, D, DV = 2, 2, 4, 3
LENGTHS = (7, 12)  # few shapes: a compiling backend traces each afresh
DOCS = {7: ((0, 0, 1, 1, 1, 2, 2), (0, 0, 0, 0, 0, 0, 1)), 12: ((0,) * 5 + (1,) * 4 + (2,) * 3, (0,) * 2 + (1,) * 10)}


def mask_specs(T):
    """(name, mask Mod or None) of every ready-made mask_mod, some combined, for length T."""
    return [("none", None), ("causal", Mod("causal_mod")), ("causal-offset", Mod("causal_mod", (-3,))),
            ("window", Mod("window_mod", (3,))), ("window-offset", Mod("window_mod", (2, 2))),
            ("document", Mod("document_mod", (DOCS[T],))), ("prefix", Mod("prefix_lm_mod", (4,))),
            ("document-causal", Mod("and_mods", (Mod("document_mod", (DOCS[T][0],)), Mod("causal_mod")))),
            ("window-or-prefix", Mod("or_mods", (Mod("window_mod", (2,)), Mod("prefix_lm_mod", (2,))))),
            # not the same under a shift along the diagonal, as window_mod alone is: query blocks whose tiles
            # are alike (PyTorch's flex batches them) still see different masks in their partial tiles
            ("window-document", Mod("and_mods", (Mod("window_mod", (4,)), Mod("document_mod", (DOCS[T],)))))]


SCORE_SPECS = [("none", None), ("alibi", Mod("alibi_mod", (H,))), ("alibi-offset", Mod("alibi_mod", (H, 3))),
               ("relative", Mod("relative_bias_mod", (((0.3, -1.0, 0.5, 2.0, -0.4), (1.0, 0.0, -2.0, 0.7, 0.1)),))),
               ("softcap", Mod("softcap_mod", (0.8,)))]


def grid(T, heads=H):
    """b, h, q_idx, kv_idx over the whole (B, heads, T, T) score grid, NumPy int32."""
    return (np.arange(B).reshape(-1, 1, 1, 1), np.arange(heads).reshape(1, -1, 1, 1),
            np.arange(T).reshape(1, 1, -1, 1), np.arange(T).reshape(1, 1, 1, -1))


def dense_keep(spec, T):
    """The mask of a spec over the whole grid, by the reference's mod (no tiles): (B, H, T, T)."""
    mod = built(reference, spec)
    return np.broadcast_to(np.ones((T, T), bool) if mod is None else mod(*grid(T)), (B, H, T, T))


def dense(queries, keys, values, keep, score_mod=None):
    """softmax(score_mod(Q K^T / sqrt(d))) V over the kept keys, float64; an empty row is zeros."""
    scores = queries @ np.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (B, H, T, T)
    if score_mod is not None:
        scores = score_mod(scores, *grid(scores.shape[-1]))
    scores = np.where(keep, scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(top), top, 0))                # 0 where dropped
    total = weights.sum(-1, keepdims=True)
    return weights / np.where(total > 0, total, 1) @ values                      # (B, H, T, dv)


def brute_kinds(keep, block_size):
    """Each tile's kind from the dense mask (B, H, T, T), tile by tile."""
    n = -(-keep.shape[-1] // block_size)
    kinds = np.zeros((n, n), np.int8)
    for i in range(n):
        for j in range(n):
            tile = keep[..., i * block_size:(i + 1) * block_size, j * block_size:(j + 1) * block_size]
            kinds[i, j] = _tiles.FULL if tile.all() else _tiles.PARTIAL if tile.any() else _tiles.EMPTY
    return kinds


def inputs(T, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, H, T, D)), rng.normal(size=(B, H, T, D)), rng.normal(size=(B, H, T, DV))]


def test_query_blocks_are_grouped_only_with_the_same_tiles():
    """_tiles.groups (PyTorch's flex batches each group in one product) joins neighbouring query blocks whose
    segments, partial tiles included, are the same relative to their first row: a window's, away from its
    start; not blocks whose partial and full tiles trade places; and no more keys than max_keys."""
    P, F, E = _tiles.PARTIAL, _tiles.FULL, _tiles.EMPTY

    def grouped(kinds, max_keys=100):
        plan = _tiles.segments(_tiles.pieces(np.array(kinds), 2, 2 * len(kinds), 2 * len(kinds[0])), 100)
        return [(q0, n) for q0, n, _, _ in _tiles.groups(plan, 2, max_keys).groups]

    window = [[P, E, E, E, E], [F, P, E, E, E], [P, F, P, E, E], [E, P, F, P, E], [E, E, P, F, P]]
    assert grouped(window) == [(0, 1), (2, 1), (4, 3)]
    assert grouped(window, max_keys=12) == [(0, 1), (2, 1), (4, 2), (8, 1)]   # segments of 6 keys
    assert grouped([[F, E, E], [P, F, E], [E, F, P]]) == [(0, 1), (2, 1), (4, 1)]  # same span, partial moved


def test_reference_is_dense_attention():
    """The reference (the harness's oracle) against the dense formula, for every mod and tile size."""
    for T in LENGTHS:
        xs = inputs(T, T)
        for (_, mask), (_, score) in zip(mask_specs(T), SCORE_SPECS * 2):
            for block_size in (1, 3, 5, 16):
                got = reference.flex_attention(*xs, mask_mod=built(reference, mask), score_mod=built(reference, score),
                                               block_size=block_size)
                np.testing.assert_allclose(got, dense(*xs, dense_keep(mask, T), built(reference, score)), atol=1e-12)


@pytest.mark.parametrize("T", LENGTHS)
def test_block_mask_classifies_every_tile(d2l, T):
    """block_mask's kinds equal the tile-by-tile classification of the dense mask, for tiles that do and
    do not divide the length (the tiles at the edges of a block are where an off-by-one shows)."""
    for name, spec in mask_specs(T)[1:]:
        keep = dense_keep(spec, T)
        for block_size in (1, 3, 4, 16):
            blocks = d2l.block_mask(built(d2l, spec), T, T, block_size, batch_size=B, num_heads=H)
            np.testing.assert_array_equal(blocks.kinds, brute_kinds(keep, block_size), err_msg=f"{name} {block_size}")
            assert blocks.fraction == pytest.approx((brute_kinds(keep, block_size) != _tiles.EMPTY).mean())


@st.composite
def flex_calls(draw):
    """A length, a mask spec, a score spec, a block size and a seed."""
    T = draw(st.sampled_from(LENGTHS))
    return (T, draw(st.sampled_from(mask_specs(T))), draw(st.sampled_from(SCORE_SPECS)),
            draw(st.sampled_from([2, 3, 5, 16])), draw(st.integers(0, 2**16)))


@settings(PROFILE, max_examples=8)
@given(call=flex_calls())
def test_equals_dense_attention(d2l, call):
    """The forward against dense attention in NumPy with the same mask and score_mod (by the reference)."""
    T, (_, mask), (_, score), block_size, seed = call
    xs = inputs(T, seed)
    got = d2l.flex_attention(*(d2l.tensor(x) for x in xs), mask_mod=built(d2l, mask), score_mod=built(d2l, score),
                             block_size=block_size)
    np.testing.assert_allclose(d2l.to_numpy(got), dense(*xs, dense_keep(mask, T), built(reference, score)), atol=1e-5)


@pytest.mark.needs("autodiff")
@settings(PROFILE, max_examples=5)
@given(call=flex_calls().filter(lambda call: call[2][0] != "softcap"))
def test_gradients_equal_dense_attention(d2l, call):
    """Forward and gradients against the backend's own DotProductAttention with the mask and the additive
    score_mod's bias as score_bias (soft-capping's gradients: the harness, against the reference)."""
    T, (_, mask), (_, score), block_size, seed = call
    xs = inputs(T, seed)
    flex = functools.partial(d2l.flex_attention, mask_mod=built(d2l, mask), score_mod=built(d2l, score),
                             block_size=block_size)
    projection = np.random.default_rng(seed + 1).normal(size=(B, H, T, DV))
    got, grads, _ = d2l.value_and_grads(flex, xs, projection)
    ref_score = built(reference, score)
    bias = np.zeros((B, H, T, T)) if ref_score is None else ref_score(np.zeros((B, H, T, T)), *grid(T))
    want, want_grads, _ = d2l.value_and_grads(d2l.DotProductAttention(), xs, projection,
                                              mask=np.array(dense_keep(mask, T)), score_bias=bias, training=False)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-4)


@pytest.mark.parametrize("mask, poisoned, clean", [
    (Mod("causal_mod"), slice(6, 8), slice(0, 6)),       # key block 3: above the diagonal of query blocks 0-2
    (Mod("window_mod", (2,)), slice(0, 2), slice(4, 8)),  # key block 0: outside the window of query blocks 2-3
], ids=["causal", "window"])
def test_empty_tiles_are_not_computed(d2l, mask, poisoned, clean):
    """Keys and values poisoned with NaN in a key block: a row whose tile with that block is empty stays
    finite, forward and backward, only if that tile is never computed (a computed, masked tile would give
    0 * NaN = NaN in p @ v, and in the backward's d scores)."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(B, H, 8, D)) for _ in range(3)]
    for x in xs[1:]:
        x[..., poisoned, :] = np.nan
    flex = functools.partial(d2l.flex_attention, mask_mod=built(d2l, mask), block_size=2)
    out, grads, _ = d2l.value_and_grads(flex, xs, np.ones((B, H, 8, D)))
    assert np.isfinite(out[..., clean, :]).all() and np.isfinite(grads[0][..., clean, :]).all()
    assert not np.isfinite(out).all()                                    # the rows that do see the block: NaN
    keep = dense_keep(mask, 8)
    np.testing.assert_allclose(out[..., clean, :], dense(*[np.nan_to_num(x) for x in xs], keep)[..., clean, :],
                               atol=1e-5)


def test_full_tiles_do_not_evaluate_the_mask(d2l):
    """A BlockMask classified for the causal mask, given a mask_mod that also drops key 0 of query 7: the
    drop lies in a full tile (query block 3, key block 0), so it is never evaluated and the result is plain
    causal attention; classified afresh, that tile is partial and the drop counts."""
    hole = lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (q_idx - kv_idx != 7)  # noqa: E731
    causal = d2l.block_mask(d2l.causal_mod(), 8, 8, 2)
    assert causal.kinds[3, 0] == _tiles.FULL
    xs = inputs(8, 1)[:2] + [np.random.default_rng(2).normal(size=(B, H, 8, D))]
    tensors = [d2l.tensor(x) for x in xs]
    keep = dense_keep(Mod("causal_mod"), 8)
    got = d2l.flex_attention(*tensors, mask_mod=dataclasses.replace(causal, mask_mod=hole), block_size=2)
    np.testing.assert_allclose(d2l.to_numpy(got), dense(*xs, keep), atol=1e-5)
    fresh = d2l.flex_attention(*tensors, mask_mod=hole, block_size=2)
    holed = keep.copy()
    holed[..., 7, 0] = False
    np.testing.assert_allclose(d2l.to_numpy(fresh), dense(*xs, holed), atol=1e-5)


def test_a_block_mask_is_reused_across_batch_and_heads(d2l):
    """Built once with batch_size = num_heads = 1 (the mask depends on neither), it serves a (2, 2) call."""
    blocks = d2l.block_mask(d2l.window_mod(3), 12, 12, 4)
    assert blocks.kinds.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]  # queries 8-11 see keys 6-11 only
    xs = inputs(12, 3)
    got = d2l.flex_attention(*(d2l.tensor(x) for x in xs), mask_mod=blocks, block_size=4)
    np.testing.assert_allclose(d2l.to_numpy(got), dense(*xs, dense_keep(Mod("window_mod", (3,)), 12)), atol=1e-5)


# --- bad input --------------------------------------------------------------------------------


def flex(d2l, q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), **kwargs):
    return d2l.flex_attention(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


BAD_INPUT = {
    "mask_mod not a function": (lambda d2l: flex(d2l, mask_mod=3), TypeError,
                                r"mask_mod must be None or a function \(b, h, q_idx, kv_idx\) -> bool, or a "
                                r"BlockMask, got int"),
    "score_mod not a function": (lambda d2l: flex(d2l, score_mod="alibi"), TypeError,
                                 r"score_mod must be None or a function \(score, b, h, q_idx, kv_idx\) -> score, "
                                 r"got str"),
    "mask_mod not boolean": (lambda d2l: flex(d2l, mask_mod=lambda b, h, q, kv: q - kv), TypeError,
                             r"mask_mod must return booleans \(True = may attend\), got int"),
    "block_mask of other sizes": (lambda d2l: flex(d2l, mask_mod=d2l.block_mask(d2l.causal_mod(), 3, 6, 2),
                                                   block_size=2), ValueError,
                                  r"block_mask was built for \(num_queries, num_keys, block_size\) = \(3, 6, 2\) and "
                                  r"\(batch, heads\) = \(1, 1\), but the call has \(3, 5, 2\) and \(2, 1\)"),
    "flex block size": (lambda d2l: flex(d2l, block_size=0), ValueError, r"block_size must be a positive integer"),
    "flex feature sizes": (lambda d2l: flex(d2l, k=(2, 5, 3)), ValueError,
                           r"queries and keys must have the same feature size"),
    "window zero": (lambda d2l: d2l.window_mod(0), ValueError, r"window must be a positive integer, got 0"),
    "prefix negative": (lambda d2l: d2l.prefix_lm_mod(-1), ValueError,
                        r"prefix_length must be a non-negative integer, got -1"),
    "softcap zero": (lambda d2l: d2l.softcap_mod(0.0), ValueError, r"cap must be a positive number, got 0.0"),
    "document ids rank": (lambda d2l: d2l.document_mod(np.zeros((1, 2, 3), np.int32)), ValueError,
                          r"document_ids must have shape \(positions,\) or \(batch, positions\), got \(1, 2, 3\)"),
    "block_mask sizes": (lambda d2l: d2l.block_mask(d2l.causal_mod(), -1, 4), ValueError,
                         r"num_queries must be a non-negative integer, got -1"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


def test_a_mask_that_empties_everything(d2l):
    """Every tile empty (keys all in the future): zeros, lse -inf, zero gradients, nothing computed."""
    xs = inputs(7, 4)
    flex = functools.partial(d2l.flex_attention, mask_mod=d2l.causal_mod(-7), block_size=3)
    out, grads, _ = d2l.value_and_grads(flex, xs, np.ones((B, H, 7, DV)))
    _, lse = flex(*(d2l.tensor(x) for x in xs), return_lse=True)
    assert not out.any() and np.isneginf(d2l.to_numpy(lse)).all() and not any(g.any() for g in grads)
