"""Scaled dot-product, additive and multi-head attention as hybridizable Gluon blocks."""

import mxnet as mx
from mxnet import init, np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.ops import _F, LENS_IN_GRAPH, _graph_keep, _lower_masked, _train_mode, keep_mask, tensor

# Uniform in +-1/sqrt(fan_in), the reference's default for a dense map.
DENSE_INIT = init.Xavier(rnd_type="uniform", factor_type="in", magnitude=1)


def _weigh_values(F, scores, keep, values, rate):
    """Masked softmax of the scores applied to the values: (output, weights, live).

    `weights` still give an empty row (nothing to attend to) uniform weights;
    `live` (1 or 0 per row) zeroes its output here, and its weights when they are
    read, so a call that nobody inspects makes no extra pass over (b, q, k).
    """
    scores, on = _lower_masked(scores, keep)                                  # (b, q, k)
    weights = F.npx.softmax(scores, axis=-1)
    live = F.np.max(on, axis=-1, keepdims=True)                              # (b, q, 1) or broadcastable
    dropped = F.npx.dropout(weights, p=rate) if rate else weights           # active only in training
    return F.npx.batch_dot(dropped, values) * live, weights, live            # (b, q, dv)


def _repeat_heads(F, X, group):
    """(b, kv_heads, n, dh) -> (b, kv_heads * group, n, dh), each head `group` times in a row.
    As np.repeat(X, group, axis=1), which is ten times slower in MXNet 1.9."""
    X = F.np.expand_dims(X, 2)                                                # (b, kv_heads, 1, n, dh)
    return F.npx.reshape(F.np.concatenate([X] * group, axis=2), (-2, -5, -2, -2))


class _Attention(nn.HybridBlock):
    """The call every attention block shares.

    A Gluon call takes positional arrays, and a hybridized graph knows no shapes,
    so the call first checks the inputs and turns `valid_lens` and `mask` into one
    boolean `keep` array (`self.keep`), then runs `hybrid_forward(F, queries, keys,
    values, keep, *extra) -> (output, weights, live)` in the requested mode and saves the
    weights (`extra`: the score bias of the blocks that take one). Called inside a graph
    being traced, it takes `mask` as that `keep` array (None: every key); a parent that made
    `keep` itself calls `with_keep`.
    """

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        return self.run(queries, keys, values, valid_lens, mask, training)

    def run(self, queries, keys, values, valid_lens, mask, training, *extra):
        if isinstance(queries, np.ndarray):                                  # concrete, not graph symbols
            mask = self.keep(queries, keys, values, valid_lens, mask)
        elif valid_lens is not None:
            raise TypeError(f"{type(self).__name__}: {LENS_IN_GRAPH}")
        elif mask is None:
            mask = _graph_keep(queries)                                       # traced in a parent's graph: all keys
        with _train_mode(training):
            return self.with_keep(queries, keys, values, mask, *extra)

    def with_keep(self, queries, keys, values, keep, *extra):
        """The graph on a ready `keep` array, as a parent's graph calls it; saves the weights."""
        out, weights, live = super().__call__(queries, keys, values, keep, *extra)
        self.save_weights(weights, live)
        return out

    def save_weights(self, weights, live):
        self._saved = (weights, live)

    @property
    def attention_weights(self):
        """(b, q, k): the weights of the last call, before dropout (an empty row: zeros). None after a
        call traced inside a parent's graph, whose graph does not hand them out."""
        saved = getattr(self, "_saved", None)
        return None if saved is None or isinstance(saved[0], mx.sym.Symbol) else saved[0] * saved[1]


class _Biased(_Attention):
    """Dot-product and multi-head attention also take a `score_bias`, one more graph input.

    A hybridized block's graph keeps the structure of its first call's inputs, so "no
    bias" enters a call as a zero (1,); a parent's graph may leave it out (`with_keep`).
    """

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, training=None,
                 extra=()):
        if score_bias is None:
            score_bias = _F(queries).np.zeros((1,))                         # adds nothing
        elif isinstance(queries, np.ndarray):                               # concrete: check it broadcasts
            score_bias = tensor(score_bias)
            _checks.check_score_bias(score_bias.shape, self.scores_shape(queries, keys))
        return self.run(queries, keys, values, valid_lens, mask, training, score_bias, *extra)


class DotProductAttention(_Biased):
    """`logit_cap` enters the graph as a (1,) input and `sinks` as one more, where given; a
    hybridized block keeps the inputs of its first call, so it is called with the same options."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.rate = _checks.checked_dropout_rate(dropout)

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, logit_cap=None,
                 sinks=None, training=None):
        if logit_cap is not None:
            logit_cap = _F(queries).np.ones((1,)) * _checks.checked_logit_cap(logit_cap)   # (1,)
        if sinks is not None and isinstance(queries, np.ndarray):          # concrete: check it broadcasts
            sinks = tensor(sinks)
            _checks.check_sinks(sinks.shape, self.scores_shape(queries, keys))
        return super().__call__(queries, keys, values, valid_lens, mask=mask, score_bias=score_bias,
                                training=training, extra=(logit_cap, sinks))

    def scores_shape(self, queries, keys):
        return (*queries.shape[:-1], keys.shape[-2])                          # (b, q, k) or (b, heads, q, k)

    def keep(self, queries, keys, values, valid_lens, mask):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, dot=True, batch_axes=2)
        return keep_mask(self.scores_shape(queries, keys), valid_lens, mask, queries.ctx)

    def hybrid_forward(self, F, queries, keys, values, keep, score_bias=None, logit_cap=None, sinks=None):
        d = F.npx.shape_array(queries)[-1:].astype("float32")               # (1,): read at run time
        scores = F.npx.batch_dot(queries / F.np.sqrt(d), keys, transpose_b=True)  # (b, q, k)
        if logit_cap is not None:
            scores = logit_cap * F.np.tanh(scores / logit_cap)               # soft-capped to (-cap, cap)
        if score_bias is not None:
            scores = scores + score_bias                                     # masking still wins in _weigh_values
        if sinks is None:
            return _weigh_values(F, scores, keep, values, self.rate)        # (b, q, dv), ...
        return _weigh_with_sinks(F, scores, keep, values, sinks, self.rate)


def _weigh_with_sinks(F, scores, keep, values, sinks, rate):
    """_weigh_values with one more key per row, first, the sink: its logit joins the softmax, its
    value is zeros, and its weight is split off the weights handed out (split: no shapes in a graph)."""
    first = F.np.split(scores, [1], axis=-1)[0]                              # (b, q, 1)
    sink = F.np.zeros_like(first) + F.np.expand_dims(sinks, -1)              # (b, q, 1): the sink's logit
    on = F.np.zeros_like(scores) + keep.astype("float32")                    # (b, q, k)
    keep = F.np.concatenate([F.np.ones_like(first), on], axis=-1) > 0        # (b, q, 1 + k): the sink always
    nothing = F.np.zeros_like(F.np.split(values, [1], axis=-2)[0])           # (b, 1, dv): the sink's value
    out, weights, live = _weigh_values(F, F.np.concatenate([sink, scores], -1), keep,
                                       F.np.concatenate([nothing, values], -2), rate)
    return out, F.np.split(weights, [1], axis=-1)[1], live                   # weights (b, q, k)


class AdditiveAttention(_Attention):
    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.W_q = nn.Dense(h, use_bias=False, flatten=False,
                            in_units=_checks.checked_positive_int("query_size", query_size))
        self.W_k = nn.Dense(h, use_bias=False, flatten=False,
                            in_units=_checks.checked_positive_int("key_size", key_size))
        self.w_v = nn.Dense(1, use_bias=False, flatten=False, in_units=h)
        self.rate = _checks.checked_dropout_rate(dropout)
        self.initialize(DENSE_INIT)

    def keep(self, queries, keys, values, valid_lens, mask):
        sizes = {"queries": self.W_q.weight.shape[1], "keys": self.W_k.weight.shape[1]}  # Dense: (out, in)
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, sizes=sizes)
        return keep_mask((*queries.shape[:-1], keys.shape[-2]), valid_lens, mask, queries.ctx)  # (b, q, k)

    def hybrid_forward(self, F, queries, keys, values, keep):
        q, k = self.W_q(queries), self.W_k(keys)                             # (b, q, h), (b, k, h)
        features = F.np.tanh(F.np.expand_dims(q, 2) + F.np.expand_dims(k, 1))  # (b, q, k, h)
        scores = F.np.squeeze(self.w_v(features), axis=-1)                   # (b, q, k)
        return _weigh_values(F, scores, keep, values, self.rate)          # (b, q, dv), ...


class MultiHeadAttention(_Biased):
    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 num_kv_heads=None, head_size=None, query_size=None, key_size=None, value_size=None):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_heads = _checks.checked_positive_int("num_heads", num_heads)
        self.head_size = _checks.checked_attention_head_size(h, self.num_heads, head_size)
        self.num_kv_heads = _checks.checked_kv_heads(self.num_heads, num_kv_heads)
        hq, kv = self.num_heads * self.head_size, self.num_kv_heads * self.head_size  # kv heads share columns
        size = {x: h if s is None else _checks.checked_positive_int(f"{x}_size", s)
                for x, s in (("query", query_size), ("key", key_size), ("value", value_size))}
        self.W_q = nn.Dense(hq, use_bias=bias, flatten=False, in_units=size["query"])
        self.W_k = nn.Dense(kv, use_bias=bias, flatten=False, in_units=size["key"])
        self.W_v = nn.Dense(kv, use_bias=bias, flatten=False, in_units=size["value"])
        self.W_o = nn.Dense(h, use_bias=bias, flatten=False, in_units=hq)
        self.attention = DotProductAttention(dropout)
        self.initialize(DENSE_INIT)

    def scores_shape(self, queries, keys):
        return queries.shape[0], self.num_heads, queries.shape[1], keys.shape[1]   # (b, heads, q, k)

    def keep(self, queries, keys, values, valid_lens, mask):
        sizes = {x: dense.weight.shape[1] for x, dense in
                 (("queries", self.W_q), ("keys", self.W_k), ("values", self.W_v))}  # Dense: (out, in)
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, sizes=sizes)
        b, q, k = queries.shape[0], queries.shape[1], keys.shape[1]
        if mask is not None:
            mask = tensor(mask)
            _checks.check_mask(mask.shape, (b, q, k), mask.dtype)
            mask = np.expand_dims(mask, 1) if mask.ndim == 3 else mask        # (b, 1, q, k): every head
        return keep_mask((b, self.num_heads, q, k), valid_lens, mask, queries.ctx)

    def _split_heads(self, F, X):
        X = F.npx.reshape(X, (-2, -2, -1, self.head_size))                   # (b, n, heads, dh)
        return F.np.transpose(X, (0, 2, 1, 3))                               # (b, heads, n, dh)

    def _attend(self, F, q, k, v, keep, score_bias=None, *, gate=None, **scoring):
        """Heads in, output out: q (b, heads, q, dh), k and v (b, kv_heads, k, dh) -> (output, weights, live).
        `gate` (b, heads, q, dh) multiplies each head's output before W_o; `scoring`: logit_cap, sinks."""
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            k, v = _repeat_heads(F, k, group), _repeat_heads(F, v, group)   # (b, heads, k, dh): h uses h // group
        out = self.attention(q, k, v, mask=keep, score_bias=score_bias, **scoring)  # (b, heads, q, dh)
        if gate is not None:
            out = out * gate                                                 # (b, heads, q, dh)
        out = F.npx.reshape(F.np.transpose(out, (0, 2, 1, 3)), (-2, -2, -5))  # (b, q, num_hiddens)
        return (self.W_o(out), *self.attention._saved)

    def hybrid_forward(self, F, queries, keys, values, keep, score_bias=None):
        q = self._split_heads(F, self.W_q(queries))                          # (b, heads, q, dh)
        k = self._split_heads(F, self.W_k(keys))                             # (b, kv_heads, k, dh)
        v = self._split_heads(F, self.W_v(values))                           # (b, kv_heads, k, dh)
        return self._attend(F, q, k, v, keep, score_bias)

    def save_weights(self, weights, live):
        self.attention.save_weights(weights, live)                           # traced, its own are symbols

    @property
    def attention_weights(self):
        return self.attention.attention_weights                              # (b, heads, q, k)


class ConcatAttention(_Attention):
    """Scores from Linear([q; k]) over `num_values` fixed slots (see d2lattn.api for its limits)."""

    def __init__(self, query_size, key_size, num_values, value_size, output_size):
        super().__init__()
        self.sizes = {name: _checks.checked_positive_int(name, n) for name, n in (
            ("query_size", query_size), ("key_size", key_size), ("num_values", num_values),
            ("value_size", value_size), ("output_size", output_size))}
        self.W_attn = nn.Dense(num_values, flatten=False, in_units=query_size + key_size)
        self.W_combine = nn.Dense(output_size, flatten=False, in_units=query_size + value_size)
        self.initialize(DENSE_INIT)

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        return super().__call__(queries, keys, values, valid_lens, mask=mask, training=training)  # no dropout

    def keep(self, queries, keys, values, valid_lens, mask):
        _checks.check_concat_inputs(queries.shape, keys.shape, values.shape, self.sizes)
        return keep_mask((*queries.shape[:-1], values.shape[1]), valid_lens, mask, queries.ctx)  # (b, q, num_values)

    def hybrid_forward(self, F, queries, keys, values, keep):
        scores = self.W_attn(F.np.concatenate([queries, keys], axis=-1))        # (b, q, num_values)
        context, weights, live = _weigh_values(F, scores, keep, values, rate=0.0)  # (b, q, value_size)
        return self.W_combine(F.np.concatenate([queries, context], axis=-1)), weights, live  # (b, q, output_size)
