"""Flex attention: a score_mod and a mask_mod over tiles of queries and keys, skipping the tiles the
mask empties (d2lattn/_tiles.py classifies them), with a recomputing backward; the ready-made mods."""

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

from d2lattn import _checks, _tiles
from d2lattn.tensorflow.encoding import alibi_slopes
from d2lattn.tensorflow.ops import take, tensor


def _index(lead, q_start, q_stop, k_start, k_stop):
    """b, h, q_idx, kv_idx: int32 tensors shaped to broadcast against a tile's scores (*lead, qb, kb);
    h indexes axis 1 of 4-d inputs (0 for 3-d ones)."""
    rank = len(lead) + 2
    b = tf.reshape(tf.range(lead[0]), (-1,) + (1,) * (rank - 1))                       # (b, 1, .., 1)
    h = tf.reshape(tf.range(lead[1] if rank > 3 else 1), (1, -1) + (1,) * (rank - 2))  # (1, h, 1, ..)
    i = tf.reshape(tf.range(q_start, q_stop), (1,) * (rank - 2) + (-1, 1))             # (1, .., qb, 1)
    j = tf.reshape(tf.range(k_start, k_stop), (1,) * (rank - 1) + (-1,))               # (1, .., 1, kb)
    return b, h, i, j


def _lead(x):
    """x's leading axes (..., q, d) -> (b, ...), the batch size a tensor where a tf.function leaves it unknown."""
    return (x.shape[0] if x.shape[0] is not None else tf.shape(x)[0], *x.shape[1:-2])


def _rows(lens, start, stop):
    """The lengths of query rows start:stop ((..., q or 1, 1) lengths; None stays None)."""
    return lens if lens is None or lens.shape[-2] == 1 else lens[..., start:stop, :]


def _raw_scores(queries, keys):
    return tf.matmul(queries, keys, transpose_b=True) / math.sqrt(queries.shape[-1])  # (..., qb, kb)


def _masked(scores, lens, mask_mod, index):
    """-inf where the mask_mod (None in a full tile: not evaluated) or the lengths drop a key."""
    keep = None if mask_mod is None else mask_mod(*index)                     # (..., qb, kb)
    if lens is not None:
        keep = index[3] < lens if keep is None else keep & (index[3] < lens)
    return scores if keep is None else tf.where(keep, scores, -math.inf)


def _tile_scores(queries, keys, lens, score_mod, mask_mod, index):
    """Scores of one tile (..., qb, kb): scaled, through score_mod, masked."""
    scores = _raw_scores(queries, keys)
    return _masked(scores if score_mod is None else score_mod(scores, *index), lens, mask_mod, index)


def _forward(queries, keys, values, lens, score_mod, mask_mod, plan):
    """The online softmax, one query block at a time over the runs of key blocks it computes."""
    lead, parts, done = _lead(queries), [], 0
    rows = lambda n: tf.zeros((*lead, n, values.shape[-1]), queries.dtype)   # noqa: E731  (..., n, dv)
    empty = lambda n: (rows(n), tf.fill((*lead, n, 1), tf.constant(-math.inf, queries.dtype)))  # noqa: E731
    for q0, q1, runs in plan:
        q = queries[..., q0:q1, :]                                            # (..., qb, d)
        m = tf.fill((*lead, q1 - q0, 1), tf.constant(-math.inf, queries.dtype))  # (..., qb, 1) running max
        l, a = tf.zeros_like(m), rows(q1 - q0)                                # running sum, running output
        for k0, k1, partial in runs:
            scores = _tile_scores(q, keys[..., k0:k1, :], _rows(lens, q0, q1), score_mod,
                                  mask_mod if partial else None, _index(lead, q0, q1, k0, k1))  # (..., qb, kb)
            m_new = tf.maximum(m, tf.reduce_max(scores, -1, keepdims=True))    # (..., qb, 1)
            shift = tf.where(tf.math.is_finite(m_new), m_new, 0.0)            # an empty row has no max yet
            p = tf.exp(scores - shift)                                        # (..., qb, kb), 0 where masked
            rescale = tf.exp(m - shift)                                       # (..., qb, 1), old terms
            l = l * rescale + tf.reduce_sum(p, -1, keepdims=True)
            a = a * rescale + tf.matmul(p, values[..., k0:k1, :])             # (..., qb, dv)
            m = m_new
        parts += [empty(q0 - done), (a / tf.where(l > 0, l, 1.0),                 # rows skipped: zeros, -inf
                                     tf.where(l > 0, m + tf.math.log(tf.where(l > 0, l, 1.0)), -math.inf))]
        done = q1
    parts.append(empty(queries.shape[-2] - done))
    return tf.concat([o for o, _ in parts], -2), tf.concat([s for _, s in parts], -2)[..., 0]  # (..., q, dv), (..., q)


def _backward(queries, keys, values, lens, score_mod, mask_mod, plan, block_size, out, lse, d_out, d_lse):
    """FlashAttention-2's backward over the same tiles: each tile's probabilities are recomputed as
    exp(scores - lse); score_mod is differentiated on the tile by a GradientTape."""
    lead, scale = _lead(queries), 1 / math.sqrt(queries.shape[-1])
    # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
    delta = (tf.reduce_sum(d_out * out, -1) - d_lse)[..., None]               # (..., q, 1)
    lse = tf.where(tf.math.is_finite(lse), lse, 0.0)[..., None]               # (..., q, 1)
    d_queries, d_keys, d_values = [], {}, {}                                  # per block: key block -> [parts]
    for q0, q1, runs in plan:
        q, do = queries[..., q0:q1, :], d_out[..., q0:q1, :]                  # (..., qb, d), (..., qb, dv)
        d_q = tf.zeros_like(q)
        for k0, k1, partial in runs:
            k, v = keys[..., k0:k1, :], values[..., k0:k1, :]                 # (..., kb, d), (..., kb, dv)
            index = _index(lead, q0, q1, k0, k1)
            raw = _raw_scores(q, k)                                           # (..., qb, kb)
            with tf.GradientTape() as tape:                                   # score_mod's own backward
                tape.watch(raw)
                modded = raw if score_mod is None else score_mod(raw, *index)
            p = tf.exp(_masked(modded, _rows(lens, q0, q1), mask_mod if partial else None, index) - lse[..., q0:q1, :])
            d_scores = p * (tf.matmul(do, v, transpose_b=True) - delta[..., q0:q1, :])  # (..., qb, kb)
            if score_mod is not None:                                         # back through score_mod
                d_scores = tape.gradient(modded, raw, output_gradients=d_scores)
            d_q += tf.matmul(d_scores, k) * scale                             # (..., qb, d)
            _add(d_keys, k0, k1, block_size, tf.matmul(d_scores, q, transpose_a=True) * scale)  # (..., kb, d)
            _add(d_values, k0, k1, block_size, tf.matmul(p, do, transpose_a=True))  # (..., kb, dv)
        d_queries.append((q0, d_q))
    return (_joined(dict(d_queries), queries, block_size), _joined(d_keys, keys, block_size),
            _joined(d_values, values, block_size))


def _add(parts, start, stop, block_size, grad):
    """Accumulate a run's gradient (..., stop - start, f) into the key blocks it covers."""
    width = stop - start
    sizes = [min(block_size, width - s) for s in range(0, width, block_size)]
    for n, piece in enumerate(tf.split(grad, sizes, axis=-2)):
        block = start + n * block_size
        parts[block] = piece if block not in parts else parts[block] + piece


def _joined(parts, like, block_size):
    """The blocks' gradients, in order along axis -2, zeros for a block nothing reached."""
    size = like.shape[-2]
    blocks = [parts.get(s, tf.zeros((*_lead(like), min(block_size, size - s), like.shape[-1]), like.dtype))
              for s in range(0, size, block_size)]
    return tf.concat(blocks, -2) if blocks else tf.zeros_like(like)


def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked): its mask_mod and the pieces to compute.
    Traced with a batch of unknown size (a tf.function's None), a mask_mod that depends on b cannot be
    classified, so every tile is partial there (nothing skipped, the mask evaluated everywhere)."""
    q, k, lead = queries.shape[-2], keys.shape[-2], tuple(queries.shape[:-2])
    heads = lead[1] if len(lead) > 1 else 1
    batch = 1 if lead[0] is None else lead[0]
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, batch, heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, batch, heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=batch, num_heads=heads))
        if lead[0] is None and mask_mod is not None and _depends_on_batch(mask_mod, heads):
            blocks = dataclasses.replace(blocks, kinds=np.full_like(blocks.kinds, _tiles.PARTIAL))
    return blocks.mask_mod, _tiles.pieces(blocks.kinds, block_size, q, k)


def _depends_on_batch(mask_mod, heads):
    """Whether mask_mod's result has a batch axis: evaluated at two copies of batch index 0."""
    with tf.init_scope():
        b, h, i, j = _index((1, heads), 0, 1, 0, 1)
        return mask_mod(tf.zeros((2, 1, 1, 1), tf.int32), h, i, j).shape[0] == 2


def _flex(queries, keys, values, lens, score_mod, mask_mod, block_size):
    mask_mod, plan = _plan(queries, keys, mask_mod, block_size)

    @tf.custom_gradient
    def flex(queries, keys, values):
        # stop_gradient: an eager tape would otherwise record every tile's ops and keep them all (O(q k))
        inputs = [tf.stop_gradient(x) for x in (queries, keys, values)]
        out, lse = _forward(*inputs, lens, score_mod, mask_mod, plan)         # (..., q, dv), (..., q)

        def grad(d_out, d_lse):
            d_lse = tf.zeros_like(lse) if d_lse is None else d_lse
            return _backward(*inputs, lens, score_mod, mask_mod, plan, block_size, out, lse, d_out, d_lse)

        return (out, lse), grad

    return flex(queries, keys, values)


def _checked_call(queries, keys, values, score_mod, mask_mod, block_size):
    return _checks.checked_flex_call(queries.shape, keys.shape, values.shape, score_mod, mask_mod, block_size)


def flex_attention(queries, keys, values, *, score_mod=None, mask_mod=None, block_size=128, return_lse=False):
    block_size = _checked_call(queries, keys, values, score_mod, mask_mod, block_size)
    out, lse = _flex(queries, keys, values, None, score_mod, mask_mod, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def block_mask(mask_mod, num_queries, num_keys, block_size=128, *, batch_size=1, num_heads=1):
    """mask_mod evaluated one block of query rows at a time against every key, classified per tile;
    evaluated eagerly even inside a tf.function (tf.init_scope), as the tiles are fixed when it traces."""
    sizes, block_size, lead = _checks.checked_block_mask(mask_mod, num_queries, num_keys, block_size, batch_size,
                                                         num_heads)
    kinds = np.full((_tiles.num_blocks(sizes[0], block_size), _tiles.num_blocks(sizes[1], block_size)), _tiles.FULL,
                    dtype=np.int8)
    with tf.init_scope():
        for n, q0 in enumerate(range(0, sizes[0], block_size)):
            if mask_mod is not None and sizes[1]:
                keep = mask_mod(*_index(lead, q0, min(q0 + block_size, sizes[0]), 0, sizes[1]))  # (.., qb, k)
                kinds[n] = _tiles.classify_rows(np.asarray(keep), block_size, sizes[1])
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
    ids = tf.convert_to_tensor(document_ids)                             # (k,) or (b, k)
    _checks.checked_document_ids(ids.shape)
    if ids.shape.rank == 1:
        return lambda b, h, q_idx, kv_idx: take(ids, q_idx) == take(ids, kv_idx)
    return lambda b, h, q_idx, kv_idx: take(ids, b, q_idx) == take(ids, b, kv_idx)


@functools.cache
def prefix_lm_mod(prefix_length):
    prefix = _checks.checked_nonnegative_int("prefix_length", prefix_length)
    return lambda b, h, q_idx, kv_idx: (kv_idx < prefix) | (kv_idx <= q_idx)


def and_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(tf.logical_and, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def or_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(tf.logical_or, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def _fold(op, masks):
    result = masks[0]
    for mask in masks[1:]:
        result = op(result, mask)
    return result


@functools.cache
def alibi_mod(num_heads, offset=0):
    slopes, offset = alibi_slopes(num_heads), _checks.checked_integer("offset", offset)
    return lambda score, b, h, q_idx, kv_idx: score - take(slopes, h) * tf.cast(tf.abs(offset + q_idx - kv_idx),
                                                                                score.dtype)


@functools.cache
def softcap_mod(cap):
    cap = _checks.checked_positive_number("cap", cap)
    return lambda score, b, h, q_idx, kv_idx: cap * tf.tanh(score / cap)


def relative_bias_mod(table):
    table = tensor(table)                                                # (heads, 2 D + 1) floats
    reach = (table.shape[-1] - 1) // 2                                   # D: the largest distance told apart
    return lambda score, b, h, q_idx, kv_idx: score + take(table, h, tf.clip_by_value(kv_idx - q_idx, -reach, reach)
                                                           + reach)
