"""Attention that fits in memory: blockwise (online-softmax) attention, flex attention's special case
without mods (its recomputing backward included), and the merge of partial results."""

import jax.numpy as jnp
from jax import lax

from d2lattn import _checks
from d2lattn.jax.flex import _flex, causal_mod
from d2lattn.jax.ops import lengths


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """flex_attention without a score_mod, causal_mod(offset) as its mask_mod, and the lengths
    applied in every tile it computes."""
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                      # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape)
    block_size = min(block_size, max(keys.shape[-2], queries.shape[-2], 1))  # no padding beyond the inputs
    mask_mod = causal_mod(offset) if causal else None
    out, lse = _flex(queries, keys, values, lens, None, mask_mod, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def merge_attention(outputs, lses):
    _checks.check_merge_inputs(outputs, lses)
    lses = jnp.stack(list(lses))                                               # (n, ..., q)
    top = lax.stop_gradient(lses.max(0))                                       # (..., q), a constant shift
    shift = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.exp(lses - shift)                                            # (n, ..., q), 0 for an empty part
    total = weights.sum(0)                                                     # (..., q)
    out = (weights[..., None] * jnp.stack(list(outputs))).sum(0) / jnp.where(total > 0, total, 1.0)[..., None]
    lse = jnp.where(total > 0, shift + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)  # (..., q)
    return out, lse
