"""Attention that fits in memory: blockwise (online-softmax) attention with a recomputing
backward, and the merge of partial results."""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from d2lattn import _checks
from d2lattn.jax.ops import lengths


def _block_scores(queries, keys, lens, causal, offset, start, num_keys):
    """Scaled scores of the queries against one block of keys starting at `start`; -inf where masked
    (and past `num_keys`, the padding of the last block)."""
    scores = queries @ jnp.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (..., q, kb)
    j = start + jnp.arange(keys.shape[-2])                                     # (kb,) key positions
    keep = j < num_keys
    if lens is not None:
        keep = keep & (j < lens)                                               # (..., q or 1, kb)
    if causal:
        keep = keep & (j <= offset + jnp.arange(queries.shape[-2])[:, None])   # (q, kb)
    return jnp.where(keep, scores, -jnp.inf)


def _padded(x, block_size):
    """x (..., k, f) padded with zeros to a whole number of blocks, at least one (the loop slices
    fixed-size blocks, and traces its body even when it runs no step)."""
    pad = max(-x.shape[-2] % block_size, block_size - x.shape[-2])
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])


@functools.partial(jax.jit, static_argnums=(4, 6))  # compiled once per shape (the offset is traced), eager calls too
def _forward(queries, keys, values, lens, causal, offset, block_size):
    """The online softmax over key blocks, in a lax.fori_loop: one block's scores live at a time."""
    num_keys = keys.shape[-2]
    keys, values = _padded(keys, block_size), _padded(values, block_size)     # (..., nb * kb, d), (..., nb * kb, dv)

    def step(n, carry):
        m, l, a = carry
        start = n * block_size
        k = lax.dynamic_slice_in_dim(keys, start, block_size, axis=-2)         # (..., kb, d)
        v = lax.dynamic_slice_in_dim(values, start, block_size, axis=-2)       # (..., kb, dv)
        scores = _block_scores(queries, k, lens, causal, offset, start, num_keys)  # (..., q, kb)
        m_new = jnp.maximum(m, scores.max(-1, keepdims=True))                  # (..., q, 1)
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)                    # an empty row has no max yet
        p = jnp.exp(scores - shift)                                            # (..., q, kb), 0 where masked
        rescale = jnp.exp(m - shift)                                           # (..., q, 1), old terms
        return m_new, l * rescale + p.sum(-1, keepdims=True), a * rescale + p @ v

    rows = queries.shape[:-1]  # made *_like the queries, so under shard_map they vary over its axes like them
    init = (jnp.full_like(queries, -jnp.inf, shape=(*rows, 1)),                # (..., q, 1) running max
            jnp.zeros_like(queries, shape=(*rows, 1)),                         # (..., q, 1) running sum
            jnp.zeros_like(queries, shape=(*rows, values.shape[-1])))          # (..., q, dv) running output
    m, l, a = lax.fori_loop(0, keys.shape[-2] // block_size, step, init)
    out = a / jnp.where(l > 0, l, 1.0)                                         # (..., q, dv), empty row: 0
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)[..., 0]  # (..., q)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 6))
def _blockwise(queries, keys, values, lens, causal, offset, block_size):
    return _forward(queries, keys, values, lens, causal, offset, block_size)


def _blockwise_fwd(queries, keys, values, lens, causal, offset, block_size):
    out, lse = _forward(queries, keys, values, lens, causal, offset, block_size)
    return (out, lse), (queries, keys, values, lens, offset, out, lse)


def _blockwise_bwd(causal, block_size, saved, grads):
    queries, keys, values, lens, offset, out, lse = saved
    grads = _backward(queries, keys, values, lens, causal, offset, block_size, out, lse, *grads)
    return (*grads, None, None)                                                # lengths and offset: no gradient


@functools.partial(jax.jit, static_argnums=(4, 6))
def _backward(queries, keys, values, lens, causal, offset, block_size, out, lse, d_out, d_lse):
    """FlashAttention-2's backward: each block's probabilities are recomputed as exp(scores - lse)."""
    num_keys, scale = keys.shape[-2], 1 / math.sqrt(queries.shape[-1])
    keys, values = _padded(keys, block_size), _padded(values, block_size)
    # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
    delta = ((d_out * out).sum(-1) - d_lse)[..., None]                         # (..., q, 1)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)[..., None]                    # (..., q, 1)

    def step(n, carry):
        d_queries, d_keys, d_values = carry
        start = n * block_size
        k = lax.dynamic_slice_in_dim(keys, start, block_size, axis=-2)         # (..., kb, d)
        v = lax.dynamic_slice_in_dim(values, start, block_size, axis=-2)       # (..., kb, dv)
        p = jnp.exp(_block_scores(queries, k, lens, causal, offset, start, num_keys) - lse)  # (..., q, kb)
        d_scores = p * (d_out @ jnp.swapaxes(v, -1, -2) - delta)               # (..., q, kb)
        d_keys = lax.dynamic_update_slice_in_dim(                              # (..., kb, d) into place
            d_keys, jnp.swapaxes(d_scores, -1, -2) @ queries * scale, start, axis=-2)
        d_values = lax.dynamic_update_slice_in_dim(                            # (..., kb, dv) into place
            d_values, jnp.swapaxes(p, -1, -2) @ d_out, start, axis=-2)
        return d_queries + d_scores @ k * scale, d_keys, d_values

    d_queries, d_keys, d_values = lax.fori_loop(
        0, keys.shape[-2] // block_size, step, (jnp.zeros_like(queries), jnp.zeros_like(keys), jnp.zeros_like(values)))
    return d_queries, d_keys[..., :num_keys, :], d_values[..., :num_keys, :]


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                      # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape)
    block_size = min(block_size, max(keys.shape[-2], 1))  # no padding beyond the keys
    out, lse = _blockwise(                                                     # (..., q, dv), (..., q)
        queries, keys, values, lens, bool(causal), jnp.int32(offset), block_size)
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
