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


def _index(lead, q_start, q_size, k_start, k_size, n=1, step=0, ctx=None):
    """b, h, q_idx, kv_idx for the scores (*lead, n, qb, kb) of n tiles (_tiles.index), as int32 arrays."""
    arange = functools.partial(np.arange, dtype="int32", ctx=ctx)
    return _tiles.index(arange, lead, q_start, q_size, k_start, k_size, n, step)


def _rows(x, start, n, size):
    """Rows start : start + n * size of x (..., rows, f) as n tiles (..., n, size, f). x with one row
    (lengths (..., 1, 1)) is every row's; None stays None."""
    if x is None or x.shape[-2] == 1:
        return None if x is None else np.expand_dims(x, -3)
    return x[..., start:start + n * size, :].reshape(x.shape[:-2] + (n, size, x.shape[-1]))


def _windows(x, start, width, n, step):
    """The n windows x[..., start + i * step : ... + width, :] of keys or values (..., k, f) as
    (..., n, width, f): one gather (MXNet has no strided views)."""
    if n == 1:
        return np.expand_dims(x[..., start:start + width, :], -3)
    at = start + np.arange(n, dtype="int32", ctx=x.ctx).reshape(-1, 1) * step + np.arange(width, dtype="int32",
                                                                                         ctx=x.ctx)
    return np.take(x, at, axis=-2)                                                       # (..., n, width, f)


def _add(parts, start, stop, block_size, grad):
    """Accumulate a run's gradient (..., stop - start, f) into the blocks it covers."""
    for s in range(0, stop - start, block_size):
        piece = grad[..., s:s + block_size, :]
        parts[start + s] = piece if start + s not in parts else parts[start + s] + piece


def _add_windows(parts, grad, start, n, step):
    """Accumulate the gradients (..., n, width, f) of n windows, the i-th from start + i * step, into the
    blocks (of `step` keys) they cover."""
    for i in range(n):
        _add(parts, start + i * step, start + i * step + grad.shape[-2], step, grad[..., i, :, :])


def _joined(parts, like, block_size):
    """The blocks' gradients, in order along axis -2, zeros for a block nothing reached."""
    size = like.shape[-2]
    blocks = [parts.get(s, np.zeros(like.shape[:-2] + (min(block_size, size - s), like.shape[-1]), ctx=like.ctx))
              for s in range(0, size, block_size)]
    return np.concatenate(blocks, axis=-2) if blocks else np.zeros_like(like)


def _raw_scores(queries, keys):
    """Q K^T / sqrt(d), the queries scaled: a tile has more scores than query entries."""
    return np.matmul(queries / math.sqrt(queries.shape[-1]), np.swapaxes(keys, -1, -2))  # (..., n, qb, kb)


def _masked(scores, lens, mask_mod, index):
    """-inf where the mask_mod (None in a full tile: not evaluated) or the lengths drop a key."""
    keep = None if mask_mod is None else mask_mod(*index)                     # (..., n, qb, kb)
    if lens is not None:
        keep = index[3] < lens if keep is None else keep * (index[3] < lens)  # MXNet broadcasts no & of booleans
    return scores if keep is None else np.where(keep, scores, -onp.inf)


def _tile_scores(queries, keys, lens, score_mod, mask_mod, index):
    """Scores of n tiles (..., n, qb, kb): scaled, through score_mod, masked."""
    scores = _raw_scores(queries, keys)
    return _masked(scores if score_mod is None else score_mod(scores, *index), lens, mask_mod, index)


def _flat(x):
    """(..., n, rows, f) -> (..., n * rows, f)."""
    return x.reshape(x.shape[:-3] + (-1, x.shape[-1]))


class _Flex(autograd.Function):
    """Forward: the online softmax over the runs of key blocks that each query block computes, a group of
    neighbouring query blocks with the same runs (a sliding window's) in one batched product.
    Backward: FlashAttention-2's, recomputing each tile's probabilities exp(scores - lse) from the saved
    log-sum-exp instead of storing them, the same tiles skipped."""

    def __init__(self, lens, score_mod, mask_mod, plan):
        super().__init__()
        self.lens, self.score_mod, self.mask_mod, self.plan = lens, score_mod, mask_mod, plan

    def _scores(self, q, keys, lead, q0, n, k0, k1, partial, ctx):
        index = _index(lead, q0, q.shape[-2], k0, k1 - k0, n, self.plan.step, ctx)
        return _tile_scores(q, _windows(keys, k0, k1 - k0, n, self.plan.step), _rows(self.lens, q0, n, q.shape[-2]),
                            self.score_mod, self.mask_mod if partial else None, index)

    def forward(self, queries, keys, values):
        lead, ctx, step = tuple(queries.shape[:-2]), queries.ctx, self.plan.step
        out = np.zeros(queries.shape[:-1] + values.shape[-1:], ctx=ctx)      # (..., q, dv), empty rows: 0
        lse = np.full(queries.shape[:-1], -onp.inf, ctx=ctx)                 # (..., q)
        for q0, n, qb, runs in self.plan.groups:
            q = _rows(queries, q0, n, qb)                                    # (..., n, qb, d)
            m = np.full(q.shape[:-1] + (1,), -onp.inf, ctx=ctx)              # (..., n, qb, 1) running max
            l = np.zeros(q.shape[:-1] + (1,), ctx=ctx)                       # (..., n, qb, 1) running sum
            a = np.zeros(q.shape[:-1] + values.shape[-1:], ctx=ctx)          # (..., n, qb, dv) running output
            for k0, k1, partial in runs:
                scores = self._scores(q, keys, lead, q0, n, k0, k1, partial, ctx)  # (..., n, qb, kb)
                m_new = np.maximum(m, scores.max(axis=-1, keepdims=True))    # (..., n, qb, 1)
                shift = np.where(np.isfinite(m_new), m_new, 0.0)            # an empty row has no max yet
                p = np.exp(scores - shift)                                   # (..., n, qb, kb), 0 where masked
                rescale = np.exp(m - shift)                                  # (..., n, qb, 1), old terms
                l = l * rescale + p.sum(axis=-1, keepdims=True)
                a = a * rescale + np.matmul(p, _windows(values, k0, k1 - k0, n, step))  # (..., n, qb, dv)
                m = m_new
            out[..., q0:q0 + n * qb, :] = _flat(a / np.where(l > 0, l, 1.0))
            lse[..., q0:q0 + n * qb] = _flat(np.where(l > 0, m + np.log(np.where(l > 0, l, 1.0)), -onp.inf))[..., 0]
        self.save_for_backward(queries, keys, values, out, lse)
        return out, lse

    def backward(self, d_out, d_lse):
        d_out, d_lse = d_out.as_np_ndarray(), d_lse.as_np_ndarray()          # autograd hands legacy NDArrays
        queries, keys, values, out, lse = self.saved_tensors
        lead, ctx, step = tuple(queries.shape[:-2]), queries.ctx, self.plan.step
        scale = 1 / math.sqrt(queries.shape[-1])
        # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
        delta = ((d_out * out).sum(axis=-1) - d_lse)[..., None]              # (..., q, 1)
        lse = np.where(np.isfinite(lse), lse, 0.0)[..., None]                # (..., q, 1)
        d_queries, d_keys, d_values = {}, {}, {}                             # block start -> gradient
        for q0, n, qb, runs in self.plan.groups:
            q, do = _rows(queries, q0, n, qb), _rows(d_out, q0, n, qb)       # (..., n, qb, d), (..., n, qb, dv)
            row_lse, row_delta = _rows(lse, q0, n, qb), _rows(delta, q0, n, qb)  # (..., n, qb, 1)
            for k0, k1, partial in runs:
                k, v = _windows(keys, k0, k1 - k0, n, step), _windows(values, k0, k1 - k0, n, step)  # (..., n, kb, d)
                index = _index(lead, q0, qb, k0, k1 - k0, n, step, ctx)
                raw = _raw_scores(q, k)                                      # (..., n, qb, kb)
                modded = raw
                if self.score_mod is not None:                               # score_mod's own backward
                    raw.attach_grad()
                    with autograd.record():
                        modded = self.score_mod(raw, *index)
                scores = _masked(modded, _rows(self.lens, q0, n, qb), self.mask_mod if partial else None, index)
                p = np.exp(scores - row_lse)                                 # (..., n, qb, kb)
                d_scores = p * (np.matmul(do, np.swapaxes(v, -1, -2)) - row_delta)  # (..., n, qb, kb)
                if self.score_mod is not None:                               # back through score_mod
                    modded.backward(d_scores)
                    d_scores = raw.grad
                _add(d_queries, q0, q0 + n * qb, step, _flat(np.matmul(d_scores, k) * scale))  # (..., n qb, d)
                _add_windows(d_keys, np.matmul(np.swapaxes(d_scores, -1, -2), q) * scale, k0, n, step)
                _add_windows(d_values, np.matmul(np.swapaxes(p, -1, -2), do), k0, n, step)  # (..., n, kb, dv)
        grads = [_joined(g, x, step) for g, x in ((d_queries, queries), (d_keys, keys), (d_values, values))]
        return tuple(g.as_nd_ndarray() for g in grads)                      # and takes them back


# At most this many keys in a group's run, all its query blocks together: a group's scores are at most
# (block, 4096), a few MB at the default block size.
_MAX_GROUP = 4096


def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked): its mask_mod and the pieces to compute."""
    q, k, lead = queries.shape[-2], keys.shape[-2], tuple(queries.shape[:-2])
    heads = lead[1] if len(lead) > 1 else 1
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, lead[0], heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, lead[0], heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=lead[0], num_heads=heads))
    runs = _tiles.segments(_tiles.pieces(blocks.kinds, block_size, q, k), 0)  # each run a segment of its own
    return blocks.mask_mod, _tiles.groups(runs, block_size, _MAX_GROUP)


def _flex(queries, keys, values, lens, score_mod, mask_mod, block_size):
    if not isinstance(queries, np.ndarray):                                  # a graph symbol
        raise TypeError(IMPERATIVE_ONLY)
    mask_mod, plan = _plan(queries, keys, mask_mod, block_size)
    return _Flex(lens, score_mod, mask_mod, plan)(queries, keys, values)


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
            keep = mask_mod(*_index(lead, q0, min(block_size, sizes[0] - q0), 0, sizes[1]))  # (.., 1, qb, k)
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
