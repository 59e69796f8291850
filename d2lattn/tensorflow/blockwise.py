"""Attention that fits in memory: blockwise (online-softmax) attention with a recomputing
backward, and the merge of partial results."""

import math

import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.ops import lengths


def _block_scores(queries, keys, lens, causal, offset, start):
    """Scaled scores of the queries against one block of keys starting at `start`; -inf where masked."""
    scores = tf.matmul(queries, keys, transpose_b=True) / math.sqrt(queries.shape[-1])  # (..., q, kb)
    j = start + tf.range(tf.shape(keys)[-2])                                   # (kb,) key positions
    keep = tf.ones_like(scores, dtype=tf.bool)
    if lens is not None:
        keep = keep & (j < lens)                                               # (..., q or 1, kb)
    if causal:
        keep = keep & (j <= offset + tf.range(tf.shape(queries)[-2])[:, None])  # (q, kb)
    return tf.where(keep, scores, -math.inf)


def _forward(queries, keys, values, lens, causal, offset, block_size):
    """The online softmax over key blocks, in a tf.while_loop: one block's scores live at a time."""

    def step(start, m, l, a):
        k, v = keys[..., start:start + block_size, :], values[..., start:start + block_size, :]  # (..., kb, d|dv)
        scores = _block_scores(queries, k, lens, causal, offset, start)       # (..., q, kb)
        m_new = tf.maximum(m, tf.reduce_max(scores, -1, keepdims=True))       # (..., q, 1)
        shift = tf.where(tf.math.is_finite(m_new), m_new, 0.0)                # an empty row has no max yet
        p = tf.exp(scores - shift)                                            # (..., q, kb), 0 where masked
        rescale = tf.exp(m - shift)                                           # (..., q, 1), old terms
        return (start + block_size, m_new, l * rescale + tf.reduce_sum(p, -1, keepdims=True),
                a * rescale + tf.matmul(p, v))

    rows = tf.concat([tf.shape(queries)[:-1], [1]], 0)                        # (..., q, 1)
    init = (0, tf.fill(rows, tf.constant(-math.inf, queries.dtype)),          # running max
            tf.zeros(rows, queries.dtype),                                    # running sum
            tf.zeros(tf.concat([tf.shape(queries)[:-1], tf.shape(values)[-1:]], 0), queries.dtype))  # (..., q, dv)
    _, m, l, a = tf.while_loop(lambda start, *_: start < tf.shape(keys)[-2], step, init)
    out = a / tf.where(l > 0, l, 1.0)                                         # (..., q, dv), empty row: 0
    lse = tf.where(l > 0, m + tf.math.log(tf.where(l > 0, l, 1.0)), -math.inf)[..., 0]  # (..., q)
    return out, lse


def _backward(queries, keys, values, lens, causal, offset, block_size, out, lse, d_out, d_lse):
    """FlashAttention-2's backward: each block's probabilities are recomputed as exp(scores - lse)."""
    scale, rank = 1 / math.sqrt(queries.shape[-1]), len(keys.shape)
    first = [rank - 2, *range(rank - 2), rank - 1]                            # (..., kb, f) -> (kb, ..., f)
    # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
    delta = (tf.reduce_sum(d_out * out, -1) - d_lse)[..., None]               # (..., q, 1)
    lse = tf.where(tf.math.is_finite(lse), lse, 0.0)[..., None]               # (..., q, 1)

    def step(n, d_queries, d_keys, d_values):
        start = n * block_size
        k, v = keys[..., start:start + block_size, :], values[..., start:start + block_size, :]  # (..., kb, d|dv)
        p = tf.exp(_block_scores(queries, k, lens, causal, offset, start) - lse)  # (..., q, kb)
        d_scores = p * (tf.matmul(d_out, v, transpose_b=True) - delta)        # (..., q, kb)
        d_keys = d_keys.write(n, tf.transpose(tf.matmul(d_scores, queries, transpose_a=True) * scale, first))
        d_values = d_values.write(n, tf.transpose(tf.matmul(p, d_out, transpose_a=True), first))
        return n + 1, d_queries + tf.matmul(d_scores, k) * scale, d_keys, d_values

    blocks = (tf.shape(keys)[-2] + block_size - 1) // block_size
    parts = [tf.TensorArray(queries.dtype, size=blocks, infer_shape=False) for _ in range(2)]  # (kb, ..., d|dv) each
    _, d_queries, d_keys, d_values = tf.while_loop(
        lambda n, *_: n < blocks, step, (0, tf.zeros_like(queries), *parts))
    back = [*range(1, rank - 1), 0, rank - 1]                                 # (k, ..., f) -> (..., k, f)
    return d_queries, tf.transpose(d_keys.concat(), back), tf.transpose(d_values.concat(), back)


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    _checks.check_block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.checked_positive_int("block_size", block_size)
    offset = _checks.checked_integer("offset", offset)
    scores_shape = (*queries.shape[:-1], keys.shape[-2])                     # (..., q, k)
    lens = None if valid_lens is None else lengths(valid_lens, scores_shape)
    settings = (lens, bool(causal), offset, block_size)

    @tf.custom_gradient
    def blockwise(queries, keys, values):
        # stop_gradient: an eager tape would otherwise record every block's ops and keep them all (O(q k))
        inputs = [tf.stop_gradient(x) for x in (queries, keys, values)]
        out, lse = _forward(*inputs, *settings)                               # (..., q, dv), (..., q)

        def grad(d_out, d_lse):
            d_lse = tf.zeros_like(lse) if d_lse is None else d_lse
            return _backward(queries, keys, values, *settings, out, lse, d_out, d_lse)

        return (out, lse), grad

    out, lse = blockwise(queries, keys, values)
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
