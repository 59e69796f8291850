"""Flex attention: a score_mod and a mask_mod over tiles of queries and keys, skipping the tiles the
mask empties (d2lattn/_tiles.py classifies them), with a recomputing backward; the ready-made mods."""

import functools
import math

import numpy as np
import torch

from d2lattn import _checks, _tiles
from d2lattn.torch.encoding import alibi_slopes
from d2lattn.torch.ops import take, tensor, to_numpy


def _index(lead, q_start, q_stop, k_start, k_stop, device=None):
    """b, h, q_idx, kv_idx: int32 tensors shaped to broadcast against a tile's scores (*lead, qb, kb);
    h indexes axis 1 of 4-d inputs (0 for 3-d ones)."""
    rank = len(lead) + 2
    b = torch.arange(lead[0], dtype=torch.int32, device=device).reshape((-1,) + (1,) * (rank - 1))  # (b, 1, .., 1)
    h = torch.arange(lead[1] if rank > 3 else 1, dtype=torch.int32, device=device).reshape(
        (1, -1) + (1,) * (rank - 2))                                                              # (1, h, 1, ..)
    i = torch.arange(q_start, q_stop, dtype=torch.int32, device=device).reshape((1,) * (rank - 2) + (-1, 1))
    j = torch.arange(k_start, k_stop, dtype=torch.int32, device=device).reshape((1,) * (rank - 1) + (-1,))
    return b, h, i, j                                                    # i (1, .., qb, 1), j (1, .., 1, kb)


def _rows(lens, start, stop):
    """The lengths of query rows start:stop ((..., q or 1, 1) lengths; None stays None)."""
    return lens if lens is None or lens.shape[-2] == 1 else lens[..., start:stop, :]


def _raw_scores(queries, keys):
    return queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])  # (..., qb, kb)


def _masked(scores, lens, mask_mod, lead, q0, q1, k0, partial):
    """Scores (..., qb, kb) of keys k0: set to -inf where the lengths drop a key, and where mask_mod
    does in the key ranges `partial` (the segment's partial tiles: its full tiles never evaluate it)."""
    if lens is not None:
        index = _index(lead, q0, q1, k0, k0 + scores.shape[-1], scores.device)
        scores = scores.masked_fill(~(index[3] < lens), -math.inf)
    for a, b in partial:
        keep = mask_mod(*_index(lead, q0, q1, a, b, scores.device))       # (..., qb, b - a)
        scores[..., a - k0:b - k0].masked_fill_(~keep, -math.inf)
    return scores


def _tile_scores(queries, keys, lens, score_mod, mask_mod, lead, q0, q1, k0, partial):
    """Scores of one segment (..., qb, kb): scaled, through score_mod, masked."""
    scores = _raw_scores(queries, keys)                                      # (..., qb, kb)
    if score_mod is not None:
        scores = score_mod(scores, *_index(lead, q0, q1, k0, k0 + keys.shape[-2], queries.device))
    return _masked(scores, lens, mask_mod, lead, q0, q1, k0, partial)


# At most this many keys per segment (one matrix product). Measured at T = 8192 (benchmarks/memory.py, the default
# allocator), the forward and backward peaked at 60 MB (0.22 of dense attention's) with runs as long
# as the sequence, whose temporaries (query block, run) take a new size for every query block, and at
# 23 MB (0.08) with runs of at most 1024 keys, for about the same time.
_MAX_WIDTH = 1024


@torch.compiler.disable  # bookkeeping on the host (NumPy), before the graph
def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked) and the pieces it computes."""
    q, k, lead = queries.shape[-2], keys.shape[-2], tuple(queries.shape[:-2])
    heads = lead[1] if len(lead) > 1 else 1
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, lead[0], heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, lead[0], heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=lead[0], num_heads=heads))
    width = max(block_size, min(q, _MAX_WIDTH))
    return blocks.mask_mod, _tiles.segments(_tiles.pieces(blocks.kinds, block_size, q, k, width), width)


class _Flex(torch.autograd.Function):
    """Forward: the online softmax, one query block at a time over the segments of key blocks it computes.
    Backward: FlashAttention-2's, recomputing each tile's probabilities exp(scores - lse) from the saved
    log-sum-exp instead of storing them, the same tiles skipped."""

    @staticmethod
    def forward(ctx, queries, keys, values, lens, score_mod, mask_mod, plan):
        lead = tuple(queries.shape[:-2])
        out = queries.new_zeros(queries.shape[:-1] + values.shape[-1:])       # (..., q, dv), empty rows: 0
        lse = queries.new_full(queries.shape[:-1], -math.inf)                 # (..., q)
        for q0, q1, runs in plan:
            q = queries[..., q0:q1, :]                                        # (..., qb, d)
            m = q.new_full(q.shape[:-1] + (1,), -math.inf)                    # (..., qb, 1) running max
            l = q.new_zeros(q.shape[:-1] + (1,))                              # (..., qb, 1) running sum
            a = q.new_zeros(q.shape[:-1] + values.shape[-1:])                 # (..., qb, dv) running output
            for k0, k1, partial in runs:
                scores = _tile_scores(q, keys[..., k0:k1, :], _rows(lens, q0, q1), score_mod, mask_mod,
                                      lead, q0, q1, k0, partial)
                m_new = torch.maximum(m, scores.amax(-1, keepdim=True))        # (..., qb, 1)
                shift = torch.where(m_new.isfinite(), m_new, 0.0)             # an empty row has no max yet
                p = torch.exp(scores.sub_(shift))                             # (..., qb, kb), 0 where masked
                rescale = torch.exp(m - shift)                                # (..., qb, 1), old terms
                l = l * rescale + p.sum(-1, keepdim=True)
                a = a.mul_(rescale).add_(p @ values[..., k0:k1, :])           # (..., qb, dv)
                m = m_new
            out[..., q0:q1, :] = a / torch.where(l > 0, l, 1.0)
            lse[..., q0:q1] = torch.where(l > 0, m + torch.log(l), -math.inf).squeeze(-1)
        ctx.save_for_backward(queries, keys, values, lens, out, lse)
        ctx.score_mod, ctx.mask_mod, ctx.plan = score_mod, mask_mod, plan
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        queries, keys, values, lens, out, lse = ctx.saved_tensors
        lead, scale = tuple(queries.shape[:-2]), 1 / math.sqrt(queries.shape[-1])
        # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
        delta = ((d_out * out).sum(-1) - d_lse)[..., None]                    # (..., q, 1)
        lse = torch.where(lse.isfinite(), lse, 0.0)[..., None]                # (..., q, 1)
        d_queries, d_keys, d_values = torch.zeros_like(queries), torch.zeros_like(keys), torch.zeros_like(values)
        for q0, q1, runs in ctx.plan:
            q, do = queries[..., q0:q1, :], d_out[..., q0:q1, :]              # (..., qb, d), (..., qb, dv)
            for k0, k1, partial in runs:
                k, v = keys[..., k0:k1, :], values[..., k0:k1, :]             # (..., kb, d), (..., kb, dv)
                raw = _raw_scores(q, k)                                       # (..., qb, kb)
                if ctx.score_mod is None:
                    modded = raw
                else:                                                         # score_mod's own backward
                    with torch.enable_grad():
                        modded = ctx.score_mod(raw.requires_grad_(), *_index(lead, q0, q1, k0, k1, q.device))
                # a copy where score_mod's backward may still need its output: _masked writes in place
                scores = _masked(modded.detach() if ctx.score_mod is None else modded.detach().clone(),
                                 _rows(lens, q0, q1), ctx.mask_mod, lead, q0, q1, k0, partial)
                p = torch.exp(scores - lse[..., q0:q1, :])                    # (..., qb, kb)
                d_values[..., k0:k1, :] += p.transpose(-1, -2) @ do           # (..., kb, dv)
                d_scores = p * (do @ v.transpose(-1, -2) - delta[..., q0:q1, :])  # (..., qb, kb)
                if ctx.score_mod is not None:                                 # back through score_mod
                    (d_scores,) = torch.autograd.grad(modded, raw, d_scores)
                d_queries[..., q0:q1, :] += d_scores @ k * scale              # (..., qb, d)
                d_keys[..., k0:k1, :] += d_scores.transpose(-1, -2) @ q * scale  # (..., kb, d)
        return d_queries, d_keys, d_values, None, None, None, None


def _flex(queries, keys, values, lens, score_mod, mask_mod, block_size):
    mask_mod, plan = _plan(queries, keys, mask_mod, block_size)
    return _Flex.apply(queries, keys, values, lens, score_mod, mask_mod, plan)


def _checked_call(queries, keys, values, score_mod, mask_mod, block_size):
    return _checks.checked_flex_call(queries.shape, keys.shape, values.shape, score_mod, mask_mod, block_size)


def flex_attention(queries, keys, values, *, score_mod=None, mask_mod=None, block_size=128, return_lse=False):
    block_size = _checked_call(queries, keys, values, score_mod, mask_mod, block_size)
    out, lse = _flex(queries, keys, values, None, score_mod, mask_mod, block_size)  # (..., q, dv), (..., q)
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
            kinds[n] = _tiles.classify_rows(to_numpy(keep), block_size, sizes[1])
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
    ids = torch.as_tensor(document_ids)                                  # (k,) or (b, k)
    _checks.checked_document_ids(ids.shape)
    if ids.ndim == 1:
        return lambda b, h, q_idx, kv_idx: take(ids, q_idx) == take(ids, kv_idx)
    return lambda b, h, q_idx, kv_idx: take(ids, b, q_idx) == take(ids, b, kv_idx)


@functools.cache
def prefix_lm_mod(prefix_length):
    prefix = _checks.checked_nonnegative_int("prefix_length", prefix_length)
    return lambda b, h, q_idx, kv_idx: (kv_idx < prefix) | (kv_idx <= q_idx)


def and_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(torch.logical_and, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def or_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(torch.logical_or, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def _fold(op, masks):
    result = masks[0]
    for mask in masks[1:]:
        result = op(result, mask)
    return result


@functools.cache
def alibi_mod(num_heads, offset=0):
    slopes, offset = alibi_slopes(num_heads), _checks.checked_integer("offset", offset)
    return lambda score, b, h, q_idx, kv_idx: score - take(slopes, h) * (offset + q_idx - kv_idx).abs()


@functools.cache
def softcap_mod(cap):
    cap = _checks.checked_positive_number("cap", cap)
    return lambda score, b, h, q_idx, kv_idx: cap * torch.tanh(score / cap)


def relative_bias_mod(table):
    table = tensor(table)                                                # (heads, 2 D + 1) floats
    reach = (table.shape[-1] - 1) // 2                                   # D: the largest distance told apart
    return lambda score, b, h, q_idx, kv_idx: score + take(table, h, (kv_idx - q_idx).clamp(-reach, reach) + reach)
