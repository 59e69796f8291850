"""Flex attention: a score_mod and a mask_mod over tiles of queries and keys, skipping the tiles the
mask empties (d2lattn/_tiles.py classifies them), with a recomputing backward; the ready-made mods."""

import functools
import math

import numpy as np
import torch

from d2lattn import _checks, _tiles
from d2lattn.torch.encoding import alibi_slopes
from d2lattn.torch.ops import take, tensor, to_numpy


def _index(lead, q_start, q_size, k_start, k_size, n=1, step=0, device=None):
    """b, h, q_idx, kv_idx for the scores (*lead, n, qb, kb) of n tiles (_tiles.index), as int32 tensors."""
    arange = functools.partial(torch.arange, dtype=torch.int32, device=device)
    return _tiles.index(arange, lead, q_start, q_size, k_start, k_size, n, step)


def _rows(x, start, n, size):
    """Rows start : start + n * size of x (..., rows, f) as n tiles (..., n, size, f): a view. x with one
    row (lengths (..., 1, 1)) is every row's; None stays None."""
    if x is None or x.shape[-2] == 1:
        return None if x is None else x.unsqueeze(-3)
    return x[..., start:start + n * size, :].unflatten(-2, (n, size))


def _windows(x, start, width, n, step):
    """The n windows x[..., start + i * step : ... + width, :] of keys or values (..., k, f) as
    (..., n, width, f): a strided view, not a copy."""
    if n == 1:
        return x[..., start:start + width, :].unsqueeze(-3)
    return x[..., start:start + (n - 1) * step + width, :].unfold(-2, width, step).transpose(-1, -2)


def _window_index(start, width, n, step, device):
    """The key positions of those windows, flattened (n * width,): where their gradients go."""
    shift = torch.arange(n, device=device).reshape(-1, 1) * step
    return (start + shift + torch.arange(width, device=device)).flatten()


def _raw_scores(queries, keys):
    """Q K^T / sqrt(d), the queries scaled: a tile has more scores than query entries."""
    return (queries / math.sqrt(queries.shape[-1])) @ keys.transpose(-1, -2)  # (..., n, qb, kb)


def _masked(scores, lens, mask_mod, lead, q0, k0, n, step, partial):
    """Scores (..., n, qb, kb) of n segments from (q0, k0), each `step` further on: set to -inf where the
    lengths drop a key, and where mask_mod does in the key ranges `partial` (the segment's partial
    tiles: its full tiles never evaluate it)."""
    qb, kb = scores.shape[-2:]
    if lens is not None:
        scores = scores.masked_fill(~(_index(lead, q0, qb, k0, kb, n, step, scores.device)[3] < lens), -math.inf)
    for a, b in partial:
        keep = mask_mod(*_index(lead, q0, qb, a, b - a, n, step, scores.device))  # (..., n, qb, b - a)
        scores[..., a - k0:b - k0].masked_fill_(~keep, -math.inf)
    return scores


def _tile_scores(queries, keys, lens, score_mod, mask_mod, lead, q0, k0, n, step, partial):
    """Scores of n segments (..., n, qb, kb): scaled, through score_mod, masked."""
    scores = _raw_scores(queries, keys)                                      # (..., n, qb, kb)
    if score_mod is not None:
        scores = score_mod(scores, *_index(lead, q0, queries.shape[-2], k0, keys.shape[-2], n, step, queries.device))
    return _masked(scores, lens, mask_mod, lead, q0, k0, n, step, partial)


# At most this many keys per segment (one matrix product). Measured at T = 8192 (benchmarks/memory.py, the default
# allocator), the forward and backward peaked at 60 MB (0.22 of dense attention's) with runs as long
# as the sequence, whose temporaries (query block, run) take a new size for every query block, and at
# 23 MB (0.08) with runs of at most 1024 keys, for about the same time.
_MAX_WIDTH = 1024
# At most this many keys in a group's segment, all its query blocks together: a group's scores are at most
# (block, 8 * _MAX_WIDTH), a few MB at the default block size.
_MAX_GROUP = 4 * _MAX_WIDTH


@torch.compiler.disable  # bookkeeping on the host (NumPy), before the graph
def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked) and the groups of query blocks it computes."""
    q, k, lead = queries.shape[-2], keys.shape[-2], tuple(queries.shape[:-2])
    heads = lead[1] if len(lead) > 1 else 1
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, lead[0], heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, lead[0], heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=lead[0], num_heads=heads))
    width = max(block_size, min(q, _MAX_WIDTH))
    plan = _tiles.segments(_tiles.pieces(blocks.kinds, block_size, q, k, width), width)
    return blocks.mask_mod, _tiles.groups(plan, block_size, _MAX_GROUP)


class _Flex(torch.autograd.Function):
    """Forward: the online softmax over the segments of key blocks that each query block computes, a group
    of neighbouring query blocks with the same segments (a sliding window's) in one batched product.
    Backward: FlashAttention-2's, recomputing each tile's probabilities exp(scores - lse) from the saved
    log-sum-exp instead of storing them, the same tiles skipped."""

    @staticmethod
    def forward(ctx, queries, keys, values, lens, score_mod, mask_mod, plan):
        lead, step = tuple(queries.shape[:-2]), plan.step
        out = queries.new_zeros(queries.shape[:-1] + values.shape[-1:])       # (..., q, dv), empty rows: 0
        lse = queries.new_full(queries.shape[:-1], -math.inf)                 # (..., q)
        for q0, n, qb, segments in plan.groups:
            q = _rows(queries, q0, n, qb)                                     # (..., n, qb, d)
            m = q.new_full(q.shape[:-1] + (1,), -math.inf)                    # (..., n, qb, 1) running max
            l = q.new_zeros(q.shape[:-1] + (1,))                              # (..., n, qb, 1) running sum
            a = q.new_zeros(q.shape[:-1] + values.shape[-1:])                 # (..., n, qb, dv) running output
            for k0, k1, partial in segments:
                scores = _tile_scores(q, _windows(keys, k0, k1 - k0, n, step), _rows(lens, q0, n, qb), score_mod,
                                      mask_mod, lead, q0, k0, n, step, partial)  # (..., n, qb, kb)
                m_new = torch.maximum(m, scores.amax(-1, keepdim=True))        # (..., n, qb, 1)
                shift = torch.where(m_new.isfinite(), m_new, 0.0)             # an empty row has no max yet
                p = scores.sub_(shift).exp_()                                 # (..., n, qb, kb), 0 where masked
                rescale = torch.exp(m - shift)                                # (..., n, qb, 1), old terms
                l = l * rescale + p.sum(-1, keepdim=True)
                a = a.mul_(rescale).add_(p @ _windows(values, k0, k1 - k0, n, step))  # (..., n, qb, dv)
                m = m_new
            out[..., q0:q0 + n * qb, :] = (a / torch.where(l > 0, l, 1.0)).flatten(-3, -2)
            lse[..., q0:q0 + n * qb] = torch.where(l > 0, m + torch.log(l), -math.inf).flatten(-3)
        ctx.save_for_backward(queries, keys, values, lens, out, lse)
        ctx.score_mod, ctx.mask_mod, ctx.plan = score_mod, mask_mod, plan
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        queries, keys, values, lens, out, lse = ctx.saved_tensors
        lead, scale, step = tuple(queries.shape[:-2]), 1 / math.sqrt(queries.shape[-1]), ctx.plan.step
        # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
        delta = ((d_out * out).sum(-1) - d_lse)[..., None]                    # (..., q, 1)
        lse = torch.where(lse.isfinite(), lse, 0.0)[..., None]                # (..., q, 1)
        d_queries, d_keys, d_values = torch.zeros_like(queries), torch.zeros_like(keys), torch.zeros_like(values)
        for q0, n, qb, segments in ctx.plan.groups:
            q, do = _rows(queries, q0, n, qb), _rows(d_out, q0, n, qb)       # (..., n, qb, d), (..., n, qb, dv)
            row_lse, row_delta = _rows(lse, q0, n, qb), _rows(delta, q0, n, qb)  # (..., n, qb, 1)
            for k0, k1, partial in segments:
                k, v = _windows(keys, k0, k1 - k0, n, step), _windows(values, k0, k1 - k0, n, step)  # (..., n, kb, d)
                raw = _raw_scores(q, k)                                       # (..., n, qb, kb)
                if ctx.score_mod is None:
                    modded = raw
                else:                                                         # score_mod's own backward
                    with torch.enable_grad():
                        modded = ctx.score_mod(raw.requires_grad_(),
                                               *_index(lead, q0, qb, k0, k1 - k0, n, step, q.device))
                # a copy where score_mod's backward may still need its output: _masked writes in place
                scores = _masked(modded.detach() if ctx.score_mod is None else modded.detach().clone(),
                                 _rows(lens, q0, n, qb), ctx.mask_mod, lead, q0, k0, n, step, partial)
                p = scores.sub_(row_lse).exp_()                               # (..., n, qb, kb)
                d_scores = (do @ v.transpose(-1, -2)).sub_(row_delta).mul_(p)  # (..., n, qb, kb)
                if ctx.score_mod is not None:                                 # back through score_mod
                    (d_scores,) = torch.autograd.grad(modded, raw, d_scores)
                keys_at = _window_index(k0, k1 - k0, n, step, q.device)       # (n * kb,)
                d_values.index_add_(-2, keys_at, (p.transpose(-1, -2) @ do).flatten(-3, -2))   # (..., n kb, dv)
                d_keys.index_add_(-2, keys_at, (d_scores.transpose(-1, -2) @ q * scale).flatten(-3, -2))
                d_queries[..., q0:q0 + n * qb, :] += (d_scores @ k * scale).flatten(-3, -2)  # (..., n qb, d)
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
            keep = mask_mod(*_index(lead, q0, min(block_size, sizes[0] - q0), 0, sizes[1]))  # (.., 1, qb, k)
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
