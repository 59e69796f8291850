"""Attention that fits in memory: blockwise (online-softmax) attention and the merge of partial results.

The reference has no backward of its own: value_and_grads differentiates it by finite differences.
"""

import math

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.ops import lengths


def _block_scores(queries, keys, lens, causal, offset, start):
    """Scaled scores of the queries against one block of keys starting at `start`; -inf where masked."""
    scores = queries @ np.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (..., q, block)
    j = np.arange(start, start + keys.shape[-2])                       # (block,): these keys' positions
    keep = np.ones(scores.shape, dtype=bool)
    if lens is not None:
        keep = keep & (j < lens)                                       # valid_lens
    if causal:
        keep = keep & (j <= offset + np.arange(queries.shape[-2])[:, None])  # causal_mask(q, k, offset=offset)
    return np.where(keep, scores, -np.inf)


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """One block of keys at a time, each query keeps a running max m of its kept scores, a running
    sum (`total`, FlashAttention's l) of exp(score - m) and a running output o (the sum of
    exp(score - m) v); when the max grows, the old sum and o are rescaled by exp(m_old - m_new).
    At the end, output o / total and log-sum-exp m + log total (-inf for a row with nothing
    kept, whose output stays 0)."""
    _checks.block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.positive_int("block_size", block_size)
    offset = _checks.integer("offset", offset)
    *lead, num_queries, _ = queries.shape                              # (..., q, d)
    num_keys = keys.shape[-2]
    lens = None if valid_lens is None else lengths(valid_lens, (*lead, num_queries, num_keys))
    m = np.full((*lead, num_queries, 1), -np.inf)                      # (..., q, 1): running max
    total = np.zeros((*lead, num_queries, 1))                          # (..., q, 1): running sum
    o = np.zeros((*lead, num_queries, values.shape[-1]))               # (..., q, dv): running output
    for start in range(0, num_keys, block_size):
        stop = min(start + block_size, num_keys)
        scores = _block_scores(queries, keys[..., start:stop, :], lens, causal, offset, start)  # (..., q, block)
        m_new = np.maximum(m, scores.max(axis=-1, keepdims=True))      # (..., q, 1)
        shift = np.where(np.isfinite(m_new), m_new, 0.0)               # nothing kept so far: no shift
        p = np.exp(scores - shift)                                     # (..., q, block): 0 where not kept
        rescale = np.exp(m - shift)                                    # (..., q, 1): 0 while m = -inf
        total = total * rescale + p.sum(axis=-1, keepdims=True)
        o = o * rescale + p @ values[..., start:stop, :]               # (..., q, dv)
        m = m_new
    empty = total == 0                                                 # (..., q, 1): nothing kept, m = -inf
    out = o / np.where(empty, 1.0, total)                              # (..., q, dv): empty rows stay 0
    lse = (m + np.log(np.where(empty, 1.0, total)))[..., 0]            # (..., q): -inf where empty
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    """lse = log sum_i exp(lse_i); output = sum_i exp(lse_i - lse) output_i, computed from the
    largest lse_i so that nothing overflows."""
    outputs, lses = [np.asarray(o) for o in outputs], [np.asarray(s) for s in lses]
    _checks.merge_inputs(outputs, lses)
    lses = np.stack(lses)                                              # (parts, ..., q)
    top = lses.max(axis=0)                                             # (..., q)
    top = np.where(np.isfinite(top), top, 0.0)                         # empty in every part: no shift
    w = np.exp(lses - top)                                             # (parts, ..., q): 0 for an empty part
    total = w.sum(axis=0)                                              # (..., q)
    out = (w[..., None] * np.stack(outputs)).sum(axis=0) / np.where(total > 0, total, 1.0)[..., None]
    lse = np.where(total > 0, top + np.log(np.where(total > 0, total, 1.0)), -np.inf)
    return out, lse                                                    # (..., q, dv), (..., q)
