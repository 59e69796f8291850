"""Attention that fits in memory: blockwise (online-softmax) attention, flex attention's special case
without mods (its recomputing backward included), and the merge of partial results.

MXNet runs blockwise_attention imperatively only, as flex_attention (d2lattn/mxnet/flex.py).
merge_attention is plain array code and hybridizes like any function.
"""

import numpy as onp
from mxnet import np

from d2lattn import _checks
from d2lattn.mxnet.flex import IMPERATIVE_ONLY, _flex, causal_mod
from d2lattn.mxnet.ops import _F, lengths


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """flex_attention without a score_mod, causal_mod(offset) as its mask_mod, and the lengths
    applied in every tile it computes."""
    if not isinstance(queries, np.ndarray):                                  # a graph symbol
        raise TypeError(IMPERATIVE_ONLY)
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                     # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape, queries.ctx)
    mask_mod = causal_mod(offset) if causal else None
    out, lse = _flex(queries, keys, values, lens, None, mask_mod, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    if not outputs or isinstance(outputs[0], np.ndarray):                    # shapes are known
        _checks.check_merge_inputs(outputs, lses)
    F = _F(outputs[0])
    lses = F.np.stack(list(lses))                                             # (n, ..., q)
    # The shift cancels out, gradients included (MXNet's NumPy interface has no stop_gradient);
    # np.where takes arrays, not scalars, whose gradient MXNet 1.9 gets wrong.
    top = F.np.max(lses, axis=0)                                              # (..., q)
    shift = F.np.where(F.np.isfinite(top), top, F.np.zeros_like(top))
    weights = F.np.exp(lses - shift)                                          # (n, ..., q), 0 for an empty part
    total = F.np.sum(weights, axis=0)                                         # (..., q)
    live = total > 0
    safe = F.np.where(live, total, F.np.ones_like(total))
    out = F.np.sum(F.np.expand_dims(weights, -1) * F.np.stack(list(outputs)), axis=0) / F.np.expand_dims(safe, -1)
    lse = F.np.where(live, shift + F.np.log(safe), F.np.full_like(total, -onp.inf))  # (..., q)
    return out, lse
