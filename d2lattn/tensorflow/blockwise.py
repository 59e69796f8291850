"""Attention that fits in memory: blockwise (online-softmax) attention, flex attention's special case
without mods (its recomputing backward included), and the merge of partial results."""

import math

import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.flex import _flex, causal_mod
from d2lattn.tensorflow.ops import lengths


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """flex_attention without a score_mod, causal_mod(offset) as its mask_mod, and the lengths
    applied in every tile it computes."""
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                     # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape)
    mask_mod = causal_mod(offset) if causal else None
    out, lse = _flex(queries, keys, values, lens, None, mask_mod, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    _checks.check_merge_inputs(outputs, lses)
    lses = tf.stack(list(lses))                                               # (n, ..., q)
    top = tf.stop_gradient(tf.reduce_max(lses, 0))                            # (..., q), a constant shift
    shift = tf.where(tf.math.is_finite(top), top, 0.0)
    weights = tf.exp(lses - shift)                                            # (n, ..., q), 0 for an empty part
    total = tf.reduce_sum(weights, 0)                                         # (..., q)
    out = tf.reduce_sum(weights[..., None] * tf.stack(list(outputs)), 0) / tf.where(total > 0, total, 1.0)[..., None]
    lse = tf.where(total > 0, shift + tf.math.log(tf.where(total > 0, total, 1.0)), -math.inf)  # (..., q)
    return out, lse
