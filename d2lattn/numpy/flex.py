"""Flex attention: a score_mod and a mask_mod over tiles of queries and keys, skipping the tiles the
mask empties (d2lattn/_tiles.py classifies them); the ready-made mods.

The reference has no backward of its own: value_and_grads differentiates it by finite differences.
"""

import functools
import math

import numpy as np

from d2lattn import _checks, _tiles
from d2lattn.numpy.encoding import alibi_slopes
from d2lattn.numpy.ops import take, tensor


def _index(lead, q_start, q_stop, k_start, k_stop):
    """b, h, q_idx, kv_idx: int32 arrays shaped to broadcast against a tile's scores (*lead, qb, kb);
    h indexes axis 1 of 4-d inputs (0 for 3-d ones)."""
    rank = len(lead) + 2
    b = np.arange(lead[0], dtype=np.int32).reshape((-1,) + (1,) * (rank - 1))       # (b, 1, .., 1)
    h = np.arange(lead[1] if rank > 3 else 1, dtype=np.int32).reshape((1, -1) + (1,) * (rank - 2))  # (1, h, 1, ..)
    i = np.arange(q_start, q_stop, dtype=np.int32).reshape((1,) * (rank - 2) + (-1, 1))  # (1, .., qb, 1)
    j = np.arange(k_start, k_stop, dtype=np.int32).reshape((1,) * (rank - 1) + (-1,))    # (1, .., 1, kb)
    return b, h, i, j


def _rows(lens, start, stop):
    """The lengths of query rows start:stop ((..., q or 1, 1) lengths; None stays None)."""
    return lens if lens is None or lens.shape[-2] == 1 else lens[..., start:stop, :]


def _tile_scores(queries, keys, lens, score_mod, mask_mod, index):
    """Scores of one tile (..., qb, kb): scaled, through score_mod, -inf where the mask_mod (None in a
    full tile: not evaluated) or the lengths drop a key."""
    scores = queries @ np.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (..., qb, kb)
    if score_mod is not None:
        scores = score_mod(scores, *index)
    keep = None if mask_mod is None else mask_mod(*index)                         # (..., qb, kb)
    if lens is not None:
        keep = index[3] < lens if keep is None else keep & (index[3] < lens)
    return scores if keep is None else np.where(keep, scores, -np.inf)


def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked) and the mask_mod to evaluate."""
    q, k, lead = queries.shape[-2], keys.shape[-2], queries.shape[:-2]
    heads = lead[1] if len(lead) > 1 else 1
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, lead[0], heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, lead[0], heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=lead[0], num_heads=heads))
    return blocks, blocks.mask_mod


def _flex(queries, keys, values, lens, score_mod, mask_mod, block_size):
    """The online softmax, one query block at a time over the runs of key blocks it does not skip: a
    running max m, sum l and output a per query, rescaled by exp(m - m_new) when the max grows."""
    blocks, mask_mod = _plan(queries, keys, mask_mod, block_size)
    lead = queries.shape[:-2]
    out = np.zeros((*queries.shape[:-1], values.shape[-1]))             # (..., q, dv): empty rows stay 0
    lse = np.full(queries.shape[:-1], -np.inf)                           # (..., q)
    for q0, q1, runs in _tiles.pieces(blocks.kinds, block_size, queries.shape[-2], keys.shape[-2]):
        q = queries[..., q0:q1, :]                                       # (..., qb, d)
        m = np.full((*q.shape[:-1], 1), -np.inf)                         # (..., qb, 1) running max
        l = np.zeros((*q.shape[:-1], 1))                                 # (..., qb, 1) running sum
        a = np.zeros((*q.shape[:-1], values.shape[-1]))                  # (..., qb, dv) running output
        for k0, k1, partial in runs:
            scores = _tile_scores(q, keys[..., k0:k1, :], _rows(lens, q0, q1), score_mod,
                                  mask_mod if partial else None, _index(lead, q0, q1, k0, k1))  # (..., qb, kb)
            m_new = np.maximum(m, scores.max(axis=-1, keepdims=True))    # (..., qb, 1)
            shift = np.where(np.isfinite(m_new), m_new, 0.0)             # nothing kept so far: no shift
            p = np.exp(scores - shift)                                   # (..., qb, kb): 0 where not kept
            rescale = np.exp(m - shift)                                  # (..., qb, 1): 0 while m = -inf
            l = l * rescale + p.sum(axis=-1, keepdims=True)
            a = a * rescale + p @ values[..., k0:k1, :]                  # (..., qb, dv)
            m = m_new
        empty = l == 0                                                   # (..., qb, 1): nothing kept
        out[..., q0:q1, :] = a / np.where(empty, 1.0, l)
        lse[..., q0:q1] = (m + np.log(np.where(empty, 1.0, l)))[..., 0]  # -inf where empty
    return out, lse


def _checked_call(queries, keys, values, score_mod, mask_mod, block_size):
    return _checks.checked_flex_call(queries.shape, keys.shape, values.shape, score_mod, mask_mod, block_size)


def flex_attention(queries, keys, values, *, score_mod=None, mask_mod=None, block_size=128, return_lse=False):
    block_size = _checked_call(np.asarray(queries), np.asarray(keys), np.asarray(values), score_mod, mask_mod,
                               block_size)
    out, lse = _flex(np.asarray(queries), np.asarray(keys), np.asarray(values), None, score_mod, mask_mod,
                     block_size)                                         # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def block_mask(mask_mod, num_queries, num_keys, block_size=128, *, batch_size=1, num_heads=1):
    """mask_mod evaluated one block of query rows at a time against every key, classified per tile."""
    sizes, block_size, lead = _checks.checked_block_mask(mask_mod, num_queries, num_keys, block_size, batch_size,
                                                         num_heads)
    kinds = np.full((_tiles.num_blocks(sizes[0], block_size), _tiles.num_blocks(sizes[1], block_size)), _tiles.FULL,
                    dtype=np.int8)
    for n, q0 in enumerate(range(0, sizes[0], block_size)):
        if mask_mod is not None and sizes[1]:
            keep = mask_mod(*_index(lead, q0, min(q0 + block_size, sizes[0]), 0, sizes[1]))  # (.., qb, k)
            kinds[n] = _tiles.classify_rows(keep, block_size, sizes[1])
    return _tiles.BlockMask(kinds, mask_mod, *sizes, block_size, *lead)


# --- ready-made mods: the same arithmetic on every backend -----------------------------------------
# Cached where their arguments are plain numbers: the same causal_mod(offset) is the same function,
# whose block masks flex_attention keeps (d2lattn/_tiles.py).


@functools.cache
def causal_mod(offset=0):
    offset = _checks.checked_integer("offset", offset)
    return lambda b, h, q_idx, kv_idx: kv_idx <= offset + q_idx


@functools.cache
def window_mod(window, offset=0):
    window, offset = _checks.checked_positive_int("window", window), _checks.checked_integer("offset", offset)
    return lambda b, h, q_idx, kv_idx: (kv_idx <= offset + q_idx) & (offset + q_idx - kv_idx < window)


def document_mod(document_ids):
    ids = np.asarray(document_ids)                                       # (k,) or (b, k)
    _checks.checked_document_ids(ids.shape)
    if ids.ndim == 1:
        return lambda b, h, q_idx, kv_idx: take(ids, q_idx) == take(ids, kv_idx)
    return lambda b, h, q_idx, kv_idx: take(ids, b, q_idx) == take(ids, b, kv_idx)


@functools.cache
def prefix_lm_mod(prefix_length):
    prefix = _checks.checked_nonnegative_int("prefix_length", prefix_length)
    return lambda b, h, q_idx, kv_idx: (kv_idx < prefix) | (kv_idx <= q_idx)


def and_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(np.logical_and, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def or_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(np.logical_or, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def _fold(op, masks):
    result = masks[0]
    for mask in masks[1:]:
        result = op(result, mask)
    return result


@functools.cache
def alibi_mod(num_heads, offset=0):
    slopes, offset = alibi_slopes(num_heads), _checks.checked_integer("offset", offset)
    return lambda score, b, h, q_idx, kv_idx: score - take(slopes, h) * np.abs(offset + q_idx - kv_idx)


@functools.cache
def softcap_mod(cap):
    cap = _checks.checked_positive_number("cap", cap)
    return lambda score, b, h, q_idx, kv_idx: cap * np.tanh(score / cap)


def relative_bias_mod(table):
    table = tensor(table)                                                # (heads, 2 D + 1) floats
    reach = (table.shape[-1] - 1) // 2                                   # D: the largest distance told apart
    return lambda score, b, h, q_idx, kv_idx: score + take(table, h, np.clip(kv_idx - q_idx, -reach, reach) + reach)

