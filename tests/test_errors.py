"""Bad input meets an error that names the argument and says what was expected,
the same exception type and message on every backend."""

import numpy as np
import pytest


def t(d2l, *shape, dtype=None):
    return d2l.tensor(np.random.default_rng(0).normal(size=shape), dtype)


def ints(d2l, *values):
    return d2l.tensor(np.array(values, dtype=np.int32))


def dot(d2l, q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), **kwargs):
    return d2l.DotProductAttention()(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


def additive(d2l, q=(2, 3, 4), k=(2, 5, 7), v=(2, 5, 6)):
    return d2l.AdditiveAttention(4, 7, 8)(t(d2l, *q), t(d2l, *k), t(d2l, *v))


def mha(d2l, q=(2, 3, 8), k=(2, 5, 8), v=(2, 5, 8), **kwargs):
    return d2l.MultiHeadAttention(8, 2)(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


def block(d2l, q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), **kwargs):
    return d2l.blockwise_attention(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


BAD_INPUT = {
    # valid_lens
    "lens batch size": (lambda d2l: dot(d2l, valid_lens=ints(d2l, 1, 2, 3)), ValueError,
                        r"valid_lens must have shape \(batch,\) = \(2,\) or \(batch, queries\) = \(2, 3\), got \(3,\)"),
    "lens per-query count": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), ints(d2l, [1, 2], [3, 4])), ValueError,
                             r"valid_lens must have shape .* got \(2, 2\)"),
    "lens rank": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), d2l.tensor(np.ones((2, 3, 1), np.int32))),
                  ValueError, r"valid_lens must have shape"),
    "lens negative": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), ints(d2l, 2, -1)), ValueError,
                      r"valid_lens must be >= 0, got a length of -1"),
    "lens fractional": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), d2l.tensor([2.0, 1.5])), ValueError,
                        r"valid_lens must hold whole numbers of keys, got a fractional length 1.5"),
    "lens fractional in a call": (lambda d2l: dot(d2l, valid_lens=d2l.tensor([[1, 2.5, 3], [1, 1, 1]])), ValueError,
                                  r"valid_lens must hold whole numbers of keys, got a fractional length 2.5"),
    "lens boolean": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), d2l.tensor(np.array([True, False]))), TypeError,
                     r"valid_lens must be integers \(or floats holding whole numbers\), got dtype bool"),
    # mask
    "mask shape": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), mask=d2l.causal_mask(3, 4)), ValueError,
                   r"mask of shape \(3, 4\) does not broadcast to the scores' shape \(2, 3, 5\)"),
    "mask not boolean": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), mask=ints(d2l, 1, 0, 1, 1, 0)), TypeError,
                         r"mask must be boolean \(True = may attend\), got dtype int32"),
    "mha mask shape": (lambda d2l: mha(d2l, mask=d2l.causal_mask(3, 3)), ValueError,
                       r"mask of shape \(3, 3\) does not broadcast to the scores' shape \(2, 3, 5\)"),
    # attention inputs
    "dot feature sizes": (lambda d2l: dot(d2l, k=(2, 5, 3)), ValueError,
                          r"queries and keys must have the same feature size .* got queries \(2, 3, 4\) "
                          r"and keys \(2, 5, 3\)"),
    "keys and values count": (lambda d2l: dot(d2l, v=(2, 4, 6)), ValueError,
                              r"keys and values must have the same number of positions"),
    "batch sizes": (lambda d2l: dot(d2l, k=(3, 5, 4), v=(3, 5, 6)), ValueError,
                    r"queries, keys and values must have the same batch size"),
    "dot rank": (lambda d2l: dot(d2l, q=(3, 4)), ValueError,
                 r"queries must have 3 axes \(batch, queries, features\), got shape \(3, 4\)"),
    "additive rank": (lambda d2l: additive(d2l, k=(2, 1, 5, 7)), ValueError,
                      r"keys must have 3 axes \(batch, keys, features\), got shape \(2, 1, 5, 7\)"),
    "additive query size": (lambda d2l: additive(d2l, q=(2, 3, 5)), ValueError,
                            r"queries must have 4 features \(last axis\), the query_size this module was built with"),
    "mha rank": (lambda d2l: mha(d2l, v=(2, 5)), ValueError, r"values must have 3 axes"),
    "mha value size": (lambda d2l: mha(d2l, v=(2, 5, 6)), ValueError,
                       r"values must have 8 features \(last axis\), the value_size"),
    # positional encoding
    "posenc too wide": (lambda d2l: d2l.PositionalEncoding(8)(t(d2l, 2, 5, 9)), ValueError,
                        r"X must have shape \(batch, steps, num_hiddens=8\), got \(2, 5, 9\)"),
    "posenc too narrow": (lambda d2l: d2l.PositionalEncoding(8)(t(d2l, 2, 5, 7)), ValueError,
                          r"X must have shape \(batch, steps, num_hiddens=8\)"),
    "posenc rank": (lambda d2l: d2l.PositionalEncoding(8)(t(d2l, 5, 8)), ValueError, r"X must have shape"),
    "posenc too long": (lambda d2l: d2l.PositionalEncoding(8, max_len=4)(t(d2l, 2, 5, 8)), ValueError,
                        r"X has 5 steps \(axis 1\), more than max_len=4"),
    # constructors
    "hiddens not int": (lambda d2l: d2l.MultiHeadAttention(8.0, 2), ValueError,
                        r"num_hiddens must be a positive integer, got 8.0"),
    "heads zero": (lambda d2l: d2l.MultiHeadAttention(8, 0), ValueError,
                   r"num_heads must be a positive integer, got 0"),
    "heads bool": (lambda d2l: d2l.MultiHeadAttention(8, True), ValueError,
                   r"num_heads must be a positive integer, got True"),
    "query size": (lambda d2l: d2l.MultiHeadAttention(8, 2, query_size=-3), ValueError,
                   r"query_size must be a positive integer, got -3"),
    "additive hiddens": (lambda d2l: d2l.AdditiveAttention(4, 4, "8"), ValueError,
                         r"num_hiddens must be a positive integer, got '8'"),
    "dropout negative": (lambda d2l: d2l.MultiHeadAttention(8, 2, dropout=-0.1), ValueError,
                         r"dropout must be a number in \[0, 1\), got -0.1"),
    "dropout one": (lambda d2l: d2l.AdditiveAttention(4, 4, 8, dropout=1), ValueError,
                    r"dropout must be a number in \[0, 1\), got 1"),
    "posenc dropout": (lambda d2l: d2l.PositionalEncoding(8, dropout=2.0), ValueError,
                       r"dropout must be a number in \[0, 1\), got 2.0"),
    # modern attention and the decoder-only model (issues 13, 14)
    "kv heads not dividing": (lambda d2l: d2l.MultiHeadAttention(8, 4, num_kv_heads=3), ValueError,
                              r"num_kv_heads \(3\) must divide num_heads \(4\)"),
    "csa kv heads not dividing": (lambda d2l: d2l.CausalSelfAttention(12, 6, num_kv_heads=4), ValueError,
                                  r"num_kv_heads \(4\) must divide num_heads \(6\)"),
    "kv heads zero": (lambda d2l: d2l.MultiHeadAttention(8, 4, num_kv_heads=0), ValueError,
                      r"num_kv_heads must be a positive integer, got 0"),
    "rope odd head size": (lambda d2l: d2l.RotaryPositionalEncoding(5), ValueError,
                           r"head_size must be even \(rotary encoding rotates pairs of features\), got 5"),
    "csa rope odd head size": (lambda d2l: d2l.CausalSelfAttention(6, 2)(t(d2l, 2, 3, 6)), ValueError,
                               r"head_size must be even \(rotary encoding rotates pairs of features\), got 3"),
    "rope width": (lambda d2l: d2l.RotaryPositionalEncoding(4)(t(d2l, 2, 3, 6)), ValueError,
                   r"X must have 4 features \(last axis\), the head_size"),
    "window zero": (lambda d2l: d2l.CausalSelfAttention(8, 2, window=0), ValueError,
                    r"window must be None or an integer >= 1 \(positions each query sees\), got 0"),
    "mask window zero": (lambda d2l: d2l.causal_mask(3, window=0), ValueError,
                         r"window must be None or an integer >= 1 \(positions each query sees\), got 0"),
    "lm window float": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, window=2.0), ValueError,
                        r"window must be None or an integer >= 1 \(positions each query sees\), got 2.0"),
    "dot score bias": (lambda d2l: dot(d2l, score_bias=t(d2l, 4, 5)), ValueError,
                       r"score_bias of shape \(4, 5\) does not broadcast to the scores' shape \(2, 3, 5\)"),
    "mha score bias": (lambda d2l: mha(d2l, score_bias=t(d2l, 3, 3, 5)), ValueError,
                       r"score_bias of shape \(3, 3, 5\) does not broadcast to the scores' shape \(2, 2, 3, 5\)"),
    "cache from another layer": (lambda d2l: d2l.CausalSelfAttention(8, 2)(
        t(d2l, 2, 1, 8), cache=d2l.CausalSelfAttention(8, 4, num_kv_heads=2)(t(d2l, 2, 3, 8))[1]), ValueError,
        r"cache must hold keys and values of shape \(batch, num_kv_heads, steps, head_size\) = \(2, 2, t, 4\), "
        r"got \(2, 2, 3, 2\) and \(2, 2, 3, 2\); was it made by a layer of another shape\?"),
    "cache of another batch": (lambda d2l: d2l.CausalSelfAttention(8, 2)(
        t(d2l, 3, 1, 8), cache=d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 3, 8))[1]), ValueError,
        r"cache must hold keys and values of shape \(batch, num_kv_heads, steps, head_size\) = \(3, 2, t, 4\)"),
    "cache not a pair": (lambda d2l: d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 1, 8), cache=t(d2l, 2, 2, 3, 4)),
                         ValueError, r"cache must be None or a tuple \(keys, values\), each of shape"),
    "csa width": (lambda d2l: d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 3, 6)), ValueError,
                  r"X must have shape \(batch, steps, num_hiddens=8\), got \(2, 3, 6\)"),
    "csa rank": (lambda d2l: d2l.CausalSelfAttention(8, 2)(t(d2l, 3, 8)), ValueError,
                 r"X must have shape \(batch, steps, num_hiddens=8\), got \(3, 8\)"),
    "lm tokens rank": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8)(ints(d2l, 1, 2, 3)), ValueError,
                       r"tokens must be token ids of shape \(batch, steps\), got \(3,\)"),
    "lm tokens rank 3": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8)(d2l.tensor(np.ones((2, 3, 1), np.int32))),
                         ValueError, r"tokens must be token ids of shape \(batch, steps\), got \(2, 3, 1\)"),
    "lm cache length": (lambda d2l: d2l.TransformerLM(5, 8, 2, 2, 8)(
        ints(d2l, [1, 2]), cache=d2l.TransformerLM(5, 8, 2, 1, 8)(ints(d2l, [1, 2]))[1]), ValueError,
        r"cache must be None or a list with one \(keys, values\) per block \(2, num_layers\), got 1 entries"),
    # blockwise attention and the merge of partial results
    "block size zero": (lambda d2l: block(d2l, block_size=0), ValueError,
                        r"block_size must be a positive integer, got 0"),
    "block size float": (lambda d2l: block(d2l, block_size=2.0), ValueError,
                         r"block_size must be a positive integer, got 2.0"),
    "block offset float": (lambda d2l: block(d2l, causal=True, offset=1.5), ValueError,
                           r"offset must be an integer, got 1.5"),
    "block feature sizes": (lambda d2l: block(d2l, k=(2, 5, 3)), ValueError,
                            r"queries and keys must have the same feature size \(last axis\), got queries \(2, 3, 4\) "
                            r"and keys \(2, 5, 3\)"),
    "block leading axes": (lambda d2l: block(d2l, k=(2, 2, 5, 4), v=(2, 2, 5, 6), q=(2, 3, 3, 4)), ValueError,
                           r"queries, keys and values must have the same leading axes"),
    "block rank": (lambda d2l: block(d2l, q=(3, 4)), ValueError,
                   r"queries, keys and values must have the same number of axes, at least 3"),
    "block keys and values": (lambda d2l: block(d2l, v=(2, 4, 6)), ValueError,
                              r"keys and values must have the same number of positions \(axis -2\)"),
    "block lens shape": (lambda d2l: block(d2l, valid_lens=ints(d2l, 1, 2, 3)), ValueError,
                         r"valid_lens must have shape \(batch,\) = \(2,\) or \(batch, queries\) = \(2, 3\)"),
    "block lens negative": (lambda d2l: block(d2l, valid_lens=ints(d2l, 2, -1)), ValueError,
                            r"valid_lens must be >= 0, got a length of -1"),
    "merge counts": (lambda d2l: d2l.merge_attention([t(d2l, 2, 3, 6)] * 2, [t(d2l, 2, 3)]), ValueError,
                     r"merge_attention needs one lse per output and at least one part, got 2 outputs and 1 lses"),
    "merge nothing": (lambda d2l: d2l.merge_attention([], []), ValueError,
                      r"merge_attention needs one lse per output and at least one part, got 0 outputs and 0 lses"),
    "merge lse shape": (lambda d2l: d2l.merge_attention([t(d2l, 2, 3, 6)] * 2, [t(d2l, 2, 3), t(d2l, 2, 4)]),
                        ValueError, r"merge_attention: outputs must share one shape \(\.\.\., q, dv\) and lses be "
                        r"\(\.\.\., q\), got outputs \(2, 3, 6\) and lses \(2, 4\)"),
    "merge output shapes": (lambda d2l: d2l.merge_attention([t(d2l, 2, 3, 6), t(d2l, 2, 3, 5)], [t(d2l, 2, 3)] * 2),
                            ValueError, r"merge_attention: outputs must share one shape"),
}


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_is_named(d2l, name):
    call, error, message = BAD_INPUT[name]
    with pytest.raises(error, match=message):
        call(d2l)


def test_lengths_beyond_the_keys_mean_all_keys(d2l):
    X = t(d2l, 2, 3, 5)
    np.testing.assert_allclose(d2l.to_numpy(d2l.masked_softmax(X, ints(d2l, 5, 99))),
                               d2l.to_numpy(d2l.masked_softmax(X)), atol=1e-6)
