"""Attention that fits in memory: blockwise (online-softmax) attention, flex attention's special case
without mods, and the merge of partial results.

The reference has no backward of its own: value_and_grads differentiates it by finite differences.
"""

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.flex import _flex, causal_mod
from d2lattn.numpy.ops import lengths


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """flex_attention without a score_mod, causal_mod(offset) as its mask_mod, and the lengths
    applied in every tile it computes."""
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                          # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape)
    mask_mod = causal_mod(offset) if causal else None
    out, lse = _flex(np.asarray(queries), np.asarray(keys), np.asarray(values), lens, None, mask_mod, block_size)
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
