"""Flex attention: a score_mod and a mask_mod over tiles of queries and keys, skipping the tiles the
mask empties (d2lattn/_tiles.py classifies them), with a recomputing backward; the ready-made mods.

Imperative only, as blockwise_attention: the custom backward is an mxnet.autograd.Function, which
cannot enter a hybridized graph, and a graph symbol has no shape to plan the tiles by.
"""

import functools
import math

import numpy as onp
from mxnet import autograd, np

from d2lattn import _checks, _tiles
from d2lattn.mxnet.encoding import alibi_slopes
from d2lattn.mxnet.ops import take, tensor

IMPERATIVE_ONLY = ("flex_attention and blockwise_attention run imperatively on MXNet: their mxnet.autograd.Function "
                   "cannot enter a hybridized graph, and a graph symbol has no shape to plan the tiles by")


def _index(lead, q_start, q_stop, k_start, k_stop, ctx=None):
    """b, h, q_idx, kv_idx: int32 arrays shaped to broadcast against a tile's scores (*lead, qb, kb);
    h indexes axis 1 of 4-d inputs (0 for 3-d ones)."""
    rank = len(lead) + 2
    b = np.arange(lead[0], dtype="int32", ctx=ctx).reshape((-1,) + (1,) * (rank - 1))           # (b, 1, .., 1)
    h = np.arange(lead[1] if rank > 3 else 1, dtype="int32", ctx=ctx).reshape((1, -1) + (1,) * (rank - 2))
    i = np.arange(q_start, q_stop, dtype="int32", ctx=ctx).reshape((1,) * (rank - 2) + (-1, 1))  # (1, .., qb, 1)
    j = np.arange(k_start, k_stop, dtype="int32", ctx=ctx).reshape((1,) * (rank - 1) + (-1,))    # (1, .., 1, kb)
    return b, h, i, j


def _rows(lens, start, stop):
    """The lengths of query rows start:stop ((..., q or 1, 1) lengths; None stays None)."""
    return lens if lens is None or lens.shape[-2] == 1 else lens[..., start:stop, :]


def _raw_scores(queries, keys):
    return np.matmul(queries, np.swapaxes(keys, -1, -2)) / math.sqrt(queries.shape[-1])  # (..., qb, kb)


def _masked(scores, lens, mask_mod, index):
    """-inf where the mask_mod (None in a full tile: not evaluated) or the lengths drop a key."""
    keep = None if mask_mod is None else mask_mod(*index)                     # (..., qb, kb)
    if lens is not None:
        keep = index[3] < lens if keep is None else keep * (index[3] < lens)  # MXNet broadcasts no & of booleans
    return scores if keep is None else np.where(keep, scores, -onp.inf)


def _tile_scores(queries, keys, lens, score_mod, mask_mod, index):
    """Scores of one tile (..., qb, kb): scaled, through score_mod, masked."""
    scores = _raw_scores(queries, keys)
    return _masked(scores if score_mod is None else score_mod(scores, *index), lens, mask_mod, index)


class _Flex(autograd.Function):
    """Forward: the online softmax, one query block at a time over the runs of key blocks it computes.
    Backward: FlashAttention-2's, recomputing each tile's probabilities exp(scores - lse) from the saved
    log-sum-exp instead of storing them, the same tiles skipped."""

    def __init__(self, lens, score_mod, mask_mod, plan, block_size):
        super().__init__()
        self.lens, self.score_mod, self.mask_mod = lens, score_mod, mask_mod
        self.plan, self.block_size = plan, block_size

    def forward(self, queries, keys, values):
        lead, ctx = tuple(queries.shape[:-2]), queries.ctx
        out = np.zeros(queries.shape[:-1] + values.shape[-1:], ctx=ctx)      # (..., q, dv), empty rows: 0
        lse = np.full(queries.shape[:-1], -onp.inf, ctx=ctx)                 # (..., q)
        for q0, q1, runs in self.plan:
            q = queries[..., q0:q1, :]                                       # (..., qb, d)
            m = np.full(q.shape[:-1] + (1,), -onp.inf, ctx=ctx)              # (..., qb, 1) running max
            l = np.zeros(q.shape[:-1] + (1,), ctx=ctx)                       # (..., qb, 1) running sum
            a = np.zeros(q.shape[:-1] + values.shape[-1:], ctx=ctx)          # (..., qb, dv) running output
            for k0, k1, partial in runs:
                scores = _tile_scores(q, keys[..., k0:k1, :], _rows(self.lens, q0, q1), self.score_mod,
                                      self.mask_mod if partial else None, _index(lead, q0, q1, k0, k1, ctx))
                m_new = np.maximum(m, scores.max(axis=-1, keepdims=True))    # (..., qb, 1)
                shift = np.where(np.isfinite(m_new), m_new, 0.0)            # an empty row has no max yet
                p = np.exp(scores - shift)                                   # (..., qb, kb), 0 where masked
                rescale = np.exp(m - shift)                                  # (..., qb, 1), old terms
                l = l * rescale + p.sum(axis=-1, keepdims=True)
                a = a * rescale + np.matmul(p, values[..., k0:k1, :])        # (..., qb, dv)
                m = m_new
            out[..., q0:q1, :] = a / np.where(l > 0, l, 1.0)
            lse[..., q0:q1] = np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -onp.inf)[..., 0]
        self.save_for_backward(queries, keys, values, out, lse)
        return out, lse

    def backward(self, d_out, d_lse):
        d_out, d_lse = d_out.as_np_ndarray(), d_lse.as_np_ndarray()          # autograd hands legacy NDArrays
        queries, keys, values, out, lse = self.saved_tensors
        lead, scale, ctx = tuple(queries.shape[:-2]), 1 / math.sqrt(queries.shape[-1]), queries.ctx
        # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
        delta = ((d_out * out).sum(axis=-1) - d_lse)[..., None]              # (..., q, 1)
        lse = np.where(np.isfinite(lse), lse, 0.0)[..., None]                # (..., q, 1)
        d_queries, d_keys, d_values = {}, {}, {}                             # block start -> gradient
        for q0, q1, runs in self.plan:
            q, do = queries[..., q0:q1, :], d_out[..., q0:q1, :]             # (..., qb, d), (..., qb, dv)
            for k0, k1, partial in runs:
                k, v = keys[..., k0:k1, :], values[..., k0:k1, :]            # (..., kb, d), (..., kb, dv)
                index = _index(lead, q0, q1, k0, k1, ctx)
                raw = _raw_scores(q, k)                                      # (..., qb, kb)
                modded = raw
                if self.score_mod is not None:                               # score_mod's own backward
                    raw.attach_grad()
                    with autograd.record():
                        modded = self.score_mod(raw, *index)
                scores = _masked(modded, _rows(self.lens, q0, q1), self.mask_mod if partial else None, index)
                p = np.exp(scores - lse[..., q0:q1, :])                      # (..., qb, kb)
                d_scores = p * (np.matmul(do, np.swapaxes(v, -1, -2)) - delta[..., q0:q1, :])  # (..., qb, kb)
                if self.score_mod is not None:                               # back through score_mod
                    modded.backward(d_scores)
                    d_scores = raw.grad
                _add(d_queries, q0, q1, self.block_size, np.matmul(d_scores, k) * scale)  # (..., qb, d)
                _add(d_keys, k0, k1, self.block_size, np.matmul(np.swapaxes(d_scores, -1, -2), q) * scale)
                _add(d_values, k0, k1, self.block_size, np.matmul(np.swapaxes(p, -1, -2), do))  # (..., kb, dv)
        grads = [_joined(g, x, self.block_size) for g, x in ((d_queries, queries), (d_keys, keys), (d_values, values))]
        return tuple(g.as_nd_ndarray() for g in grads)                      # and takes them back


def _add(parts, start, stop, block_size, grad):
    """Accumulate a run's gradient (..., stop - start, f) into the blocks it covers."""
    for s in range(0, stop - start, block_size):
        piece = grad[..., s:s + block_size, :]
        parts[start + s] = piece if start + s not in parts else parts[start + s] + piece


def _joined(parts, like, block_size):
    """The blocks' gradients, in order along axis -2, zeros for a block nothing reached."""
    size = like.shape[-2]
    blocks = [parts.get(s, np.zeros(like.shape[:-2] + (min(block_size, size - s), like.shape[-1]), ctx=like.ctx))
              for s in range(0, size, block_size)]
    return np.concatenate(blocks, axis=-2) if blocks else np.zeros_like(like)


def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked): its mask_mod and the pieces to compute."""
    q, k, lead = queries.shape[-2], keys.shape[-2], tuple(queries.shape[:-2])
    heads = lead[1] if len(lead) > 1 else 1
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, lead[0], heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, lead[0], heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=lead[0], num_heads=heads))
    return blocks.mask_mod, _tiles.pieces(blocks.kinds, block_size, q, k)


def _flex(queries, keys, values, lens, score_mod, mask_mod, block_size):
    if not isinstance(queries, np.ndarray):                                  # a graph symbol
        raise TypeError(IMPERATIVE_ONLY)
    mask_mod, plan = _plan(queries, keys, mask_mod, block_size)
    return _Flex(lens, score_mod, mask_mod, plan, block_size)(queries, keys, values)


def _checked_call(queries, keys, values, score_mod, mask_mod, block_size):
    if not isinstance(queries, np.ndarray):                                  # a graph symbol
        raise TypeError(IMPERATIVE_ONLY)
    return _checks.checked_flex_call(queries.shape, keys.shape, values.shape, score_mod, mask_mod, block_size)


def flex_attention(queries, keys, values, *, score_mod=None, mask_mod=None, block_size=128, return_lse=False):
    block_size = _checked_call(queries, keys, values, score_mod, mask_mod, block_size)
    out, lse = _flex(queries, keys, values, None, score_mod, mask_mod, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def block_mask(mask_mod, num_queries, num_keys, block_size=128, *, batch_size=1, num_heads=1):
    """mask_mod evaluated one block of query rows at a time against every key, classified per tile."""
    sizes, block_size, lead = _checks.checked_block_mask(mask_mod, num_queries, num_keys, block_size, batch_size,
                                                         num_heads)
    kinds = onp.full((_tiles.num_blocks(sizes[0], block_size), _tiles.num_blocks(sizes[1], block_size)), _tiles.FULL,
                     dtype=onp.int8)
    for n, q0 in enumerate(range(0, sizes[0], block_size)):
        if mask_mod is not None and sizes[1]:
            keep = mask_mod(*_index(lead, q0, min(q0 + block_size, sizes[0]), 0, sizes[1]))  # (.., qb, k)
            kinds[n] = _tiles.classify_rows(keep.asnumpy(), block_size, sizes[1])
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
    ids = tensor(document_ids)                                           # (k,) or (b, k)
    _checks.checked_document_ids(ids.shape)
    if ids.ndim == 1:
        return lambda b, h, q_idx, kv_idx: take(ids, q_idx) == take(ids, kv_idx)
    return lambda b, h, q_idx, kv_idx: take(ids, b, q_idx) == take(ids, b, kv_idx)


@functools.cache
def prefix_lm_mod(prefix_length):
    prefix = _checks.checked_nonnegative_int("prefix_length", prefix_length)
    return lambda b, h, q_idx, kv_idx: np.where(kv_idx < prefix, True, kv_idx <= q_idx)  # broadcasts, unlike |


def and_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(lambda x, y: x * y, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def or_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(lambda x, y: x + y, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def _fold(op, masks):
    """op over the masks; on MXNet's booleans * is and, + is or (its & and | do not broadcast them)."""
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
