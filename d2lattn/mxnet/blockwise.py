"""Attention that fits in memory: blockwise (online-softmax) attention with a recomputing
backward, and the merge of partial results.

MXNet runs blockwise_attention imperatively only: its custom backward is an
mxnet.autograd.Function, which records on NDArrays and cannot enter a hybridized
(symbolic) graph, and a symbol in MXNet 1.9 has no shape to count the key blocks
by. merge_attention is plain array code and hybridizes like any function.
"""

import math

import numpy as onp
from mxnet import autograd, np

from d2lattn import _checks
from d2lattn.mxnet.ops import _F, tensor

IMPERATIVE_ONLY = ("blockwise_attention runs imperatively on MXNet: its mxnet.autograd.Function cannot enter "
                   "a hybridized graph, and a graph symbol has no shape to count the key blocks by")


def _lengths(valid_lens, scores_shape, ctx):
    """valid_lens reshaped to line up with (..., q, k) scores, or None; checked like keep_mask."""
    if valid_lens is None:
        return None
    lens = tensor(valid_lens).as_in_ctx(ctx)
    lens = lens.reshape(_checks.lens_view(lens.shape, scores_shape, lens.dtype))  # (b, 1.., 1) or (b, 1.., q, 1)
    _checks.lens_values(lens.asnumpy())                       # whole numbers, none negative
    return lens.astype("int32")                               # a float length counts like an integer


def _block_scores(queries, keys, lens, causal, offset, start):
    """Scaled scores of the queries against one block of keys starting at `start`; -inf where masked."""
    scores = np.matmul(queries, np.swapaxes(keys, -1, -2)) / math.sqrt(queries.shape[-1])  # (..., q, kb)
    j = np.arange(start, start + keys.shape[-2], dtype="int32", ctx=queries.ctx)  # (kb,) key positions
    keep = np.ones(scores.shape, dtype=bool, ctx=queries.ctx)
    if lens is not None:
        keep = keep * (j < lens)                                              # (..., q or 1, kb); no & on booleans
    if causal:
        keep = keep * (j <= offset + np.arange(queries.shape[-2], dtype="int32", ctx=queries.ctx)[:, None])  # (q, kb)
    return np.where(keep, scores, -onp.inf)


class _Blockwise(autograd.Function):
    """Forward: the online softmax over key blocks. Backward: FlashAttention-2's, recomputing each
    block's probabilities exp(scores - lse) from the saved log-sum-exp instead of storing them."""

    def __init__(self, lens, causal, offset, block_size):
        super().__init__()
        self.lens, self.causal, self.offset, self.block_size = lens, causal, offset, block_size

    def forward(self, queries, keys, values):
        rows = queries.shape[:-1] + (1,)
        top = np.full(rows, -onp.inf, ctx=queries.ctx)                        # (..., q, 1) running max
        total = np.zeros(rows, ctx=queries.ctx)                               # (..., q, 1) running sum
        acc = np.zeros(queries.shape[:-1] + values.shape[-1:], ctx=queries.ctx)  # (..., q, dv) running output
        for start in range(0, keys.shape[-2], self.block_size):
            stop = start + self.block_size
            scores = _block_scores(queries, keys[..., start:stop, :], self.lens, self.causal, self.offset, start)
            new_top = np.maximum(top, scores.max(axis=-1, keepdims=True))     # (..., q, 1)
            shift = np.where(np.isfinite(new_top), new_top, 0.0)             # an empty row has no max yet
            p = np.exp(scores - shift)                                        # (..., q, kb), 0 where masked
            rescale = np.exp(top - shift)                                     # (..., q, 1), old terms
            total = total * rescale + p.sum(axis=-1, keepdims=True)
            acc = acc * rescale + np.matmul(p, values[..., start:stop, :])    # (..., q, dv)
            top = new_top
        out = acc / np.where(total > 0, total, 1.0)                           # (..., q, dv), empty row: 0
        lse = np.where(total > 0, top + np.log(np.where(total > 0, total, 1.0)), -onp.inf)[..., 0]  # (..., q)
        self.save_for_backward(queries, keys, values, out, lse)
        return out, lse

    def backward(self, d_out, d_lse):
        d_out, d_lse = d_out.as_np_ndarray(), d_lse.as_np_ndarray()           # autograd hands legacy NDArrays
        queries, keys, values, out, lse = self.saved_tensors
        scale = 1 / math.sqrt(queries.shape[-1])
        # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
        delta = ((d_out * out).sum(axis=-1) - d_lse)[..., None]               # (..., q, 1)
        lse = np.where(np.isfinite(lse), lse, 0.0)[..., None]                 # (..., q, 1)
        d_queries, d_keys, d_values = np.zeros_like(queries), [], []
        for start in range(0, keys.shape[-2], self.block_size):
            stop = start + self.block_size
            k, v = keys[..., start:stop, :], values[..., start:stop, :]       # (..., kb, d), (..., kb, dv)
            p = np.exp(_block_scores(queries, k, self.lens, self.causal, self.offset, start) - lse)  # (..., q, kb)
            d_values.append(np.matmul(np.swapaxes(p, -1, -2), d_out))         # (..., kb, dv)
            d_scores = p * (np.matmul(d_out, np.swapaxes(v, -1, -2)) - delta)  # (..., q, kb)
            d_queries = d_queries + np.matmul(d_scores, k) * scale            # (..., q, d)
            d_keys.append(np.matmul(np.swapaxes(d_scores, -1, -2), queries) * scale)  # (..., kb, d)
        grads = d_queries, np.concatenate(d_keys, axis=-2), np.concatenate(d_values, axis=-2)
        return tuple(g.as_nd_ndarray() for g in grads)                       # and takes them back


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    if not isinstance(queries, np.ndarray):                                  # a graph symbol
        raise TypeError(IMPERATIVE_ONLY)
    _checks.block_inputs(queries.shape, keys.shape, values.shape)
    block_size = _checks.positive_int("block_size", block_size)
    offset = _checks.integer("offset", offset)
    lens = _lengths(valid_lens, (*queries.shape[:-1], keys.shape[-2]), queries.ctx)
    out, lse = _Blockwise(lens, bool(causal), offset, block_size)(queries, keys, values)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out



def merge_attention(outputs, lses):
    if not outputs or isinstance(outputs[0], np.ndarray):                    # shapes are known
        _checks.merge_inputs(outputs, lses)
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
