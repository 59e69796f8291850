"""Attention that fits in memory: blockwise (online-softmax) attention with a recomputing
backward, and the merge of partial results."""

import math

import torch

from d2lattn import _checks
from d2lattn.torch.ops import lengths


def _block_scores(queries, keys, lens, causal, offset, start):
    """Scaled scores of the queries against one block of keys starting at `start`; -inf where masked."""
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])  # (..., q, kb)
    j = torch.arange(start, start + keys.shape[-2], device=queries.device)     # (kb,) key positions
    keep = torch.ones_like(scores, dtype=torch.bool)
    if lens is not None:
        keep = keep & (j < lens)                                               # (..., q or 1, kb)
    if causal:
        i = torch.arange(queries.shape[-2], device=queries.device)[:, None]    # (q, 1)
        keep = keep & (j <= offset + i)                                        # (q, kb)
    return scores.masked_fill(~keep, -math.inf)


class _Blockwise(torch.autograd.Function):
    """Forward: the online softmax over key blocks. Backward: FlashAttention-2's, recomputing each
    block's probabilities exp(scores - lse) from the saved log-sum-exp instead of storing them."""

    @staticmethod
    def forward(ctx, queries, keys, values, lens, causal, offset, block_size):
        m = queries.new_full(queries.shape[:-1] + (1,), -math.inf)            # (..., q, 1) running max
        l = queries.new_zeros(queries.shape[:-1] + (1,))                       # (..., q, 1) running sum
        a = queries.new_zeros(queries.shape[:-1] + values.shape[-1:])         # (..., q, dv) running output
        for start in range(0, keys.shape[-2], block_size):
            stop = start + block_size
            scores = _block_scores(queries, keys[..., start:stop, :], lens, causal, offset, start)  # (..., q, kb)
            m_new = torch.maximum(m, scores.amax(-1, keepdim=True))            # (..., q, 1)
            shift = torch.where(m_new.isfinite(), m_new, 0.0)                 # an empty row has no max yet
            p = torch.exp(scores - shift)                                     # (..., q, kb), 0 where masked
            rescale = torch.exp(m - shift)                                    # (..., q, 1), old terms
            l = l * rescale + p.sum(-1, keepdim=True)
            a = a * rescale + p @ values[..., start:stop, :]                  # (..., q, dv)
            m = m_new
        out = a / torch.where(l > 0, l, 1.0)                                  # (..., q, dv), empty row: 0
        lse = torch.where(l > 0, m + torch.log(l), -math.inf).squeeze(-1)           # (..., q)
        ctx.save_for_backward(queries, keys, values, lens, out, lse)
        ctx.causal, ctx.offset, ctx.block_size = causal, offset, block_size
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        queries, keys, values, lens, out, lse = ctx.saved_tensors
        scale = 1 / math.sqrt(queries.shape[-1])
        # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
        delta = ((d_out * out).sum(-1) - d_lse)[..., None]                    # (..., q, 1)
        lse = torch.where(lse.isfinite(), lse, 0.0)[..., None]                # (..., q, 1)
        d_queries, d_keys, d_values = torch.zeros_like(queries), [], []
        for start in range(0, keys.shape[-2], ctx.block_size):
            k, v = keys[..., start:start + ctx.block_size, :], values[..., start:start + ctx.block_size, :]
            p = torch.exp(_block_scores(queries, k, lens, ctx.causal, ctx.offset, start) - lse)  # (..., q, kb)
            d_values.append(p.transpose(-1, -2) @ d_out)                      # (..., kb, dv)
            d_scores = p * (d_out @ v.transpose(-1, -2) - delta)              # (..., q, kb)
            d_queries = d_queries + d_scores @ k * scale                      # (..., q, d)
            d_keys.append(d_scores.transpose(-1, -2) @ queries * scale)       # (..., kb, d)
        return d_queries, torch.cat(d_keys, -2), torch.cat(d_values, -2), None, None, None, None


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                     # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape, queries.device)
    out, lse = _Blockwise.apply(queries, keys, values, lens, bool(causal), offset, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    _checks.check_merge_inputs(outputs, lses)
    lses = torch.stack(list(lses))                                            # (n, ..., q)
    top = lses.amax(0).detach()                                               # (..., q), a constant shift
    shift = torch.where(top.isfinite(), top, 0.0)
    weights = torch.exp(lses - shift)                                         # (n, ..., q), 0 for an empty part
    total = weights.sum(0)                                                    # (..., q)
    out = (weights[..., None] * torch.stack(list(outputs))).sum(0) / torch.where(total > 0, total, 1.0)[..., None]
    lse = torch.where(total > 0, shift + torch.log(torch.where(total > 0, total, 1.0)), -math.inf)  # (..., q)
    return out, lse
