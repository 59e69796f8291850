"""Attention that fits in memory: blockwise (online-softmax) attention and the merge of partial results.

The reference has no backward of its own: value_and_grads differentiates it by finite differences.
"""

import math

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.ops import lengths


def _block_scores(queries, keys, lens, causal, offset, start):
    """Scaled scores of the queries against one block of keys starting at `start`; -inf where masked."""
    scores = queries @ np.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (..., q, kb)
    j = np.arange(start, start + keys.shape[-2])                                  # (kb,) key positions
    keep = np.ones(scores.shape, dtype=bool)
    if lens is not None:
        keep = keep & (j < lens)                                                  # (..., q or 1, kb)
    if causal:
        keep = keep & (j <= offset + np.arange(queries.shape[-2])[:, None])       # (q, kb)
    return np.where(keep, scores, -np.inf)


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """One block of keys at a time, each query keeps a running max m of its kept scores, a running
    sum l of exp(score - m) and a running output a (the sum of exp(score - m) v); when the max
    grows, the old l and a are rescaled by exp(m - m_new). At the end, output a / l and log-sum-exp
    m + log l (-inf for a row with nothing kept, whose output stays 0)."""
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                          # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape)
    m = np.full((*queries.shape[:-1], 1), -np.inf)                     # (..., q, 1): running max
    l = np.zeros((*queries.shape[:-1], 1))                             # (..., q, 1): running sum
    a = np.zeros((*queries.shape[:-1], values.shape[-1]))              # (..., q, dv): running output
    for start in range(0, keys.shape[-2], block_size):
        stop = start + block_size
        scores = _block_scores(queries, keys[..., start:stop, :], lens, causal, offset, start)  # (..., q, kb)
        m_new = np.maximum(m, scores.max(axis=-1, keepdims=True))      # (..., q, 1)
        shift = np.where(np.isfinite(m_new), m_new, 0.0)               # nothing kept so far: no shift
        p = np.exp(scores - shift)                                     # (..., q, kb): 0 where not kept
        rescale = np.exp(m - shift)                                    # (..., q, 1): 0 while m = -inf
        l = l * rescale + p.sum(axis=-1, keepdims=True)
        a = a * rescale + p @ values[..., start:stop, :]               # (..., q, dv)
        m = m_new
    empty = l == 0                                                     # (..., q, 1): nothing kept, m = -inf
    out = a / np.where(empty, 1.0, l)                                  # (..., q, dv): empty rows stay 0
    lse = (m + np.log(np.where(empty, 1.0, l)))[..., 0]                # (..., q): -inf where empty
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    """lse = log sum_i exp(lse_i); output = sum_i exp(lse_i - lse) output_i, computed from the
    largest lse_i so that nothing overflows."""
    outputs, lses = [np.asarray(o) for o in outputs], [np.asarray(s) for s in lses]
    _checks.check_merge_inputs(outputs, lses)
    lses = np.stack(lses)                                              # (parts, ..., q)
    top = lses.max(axis=0)                                             # (..., q)
    shift = np.where(np.isfinite(top), top, 0.0)                       # empty in every part: no shift
    weights = np.exp(lses - shift)                                     # (parts, ..., q): 0 for an empty part
    total = weights.sum(axis=0)                                        # (..., q)
    out = (weights[..., None] * np.stack(outputs)).sum(axis=0) / np.where(total > 0, total, 1.0)[..., None]
    lse = np.where(total > 0, shift + np.log(np.where(total > 0, total, 1.0)), -np.inf)
    return out, lse                                                    # (..., q, dv), (..., q)
