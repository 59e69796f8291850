"""Scaled dot-product, additive, multi-head and concat attention as Keras layers."""

import math

import keras
import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.ops import _Layer, _RecordedWeights, keep_mask, masked_softmax


def _dense_layer(in_size, out_size, bias=False):
    """A Keras Dense map built for `in_size` features, so its weights exist right away."""
    layer = keras.layers.Dense(out_size, use_bias=bias)
    layer.build((None, in_size))
    return layer


class _Attention(_Layer):
    """A Keras layer whose `mask=` says which keys each query may attend to.

    Keras takes a `mask` argument for a padding mask to hand on to the output,
    and warns when a layer cannot; this one restricts attention, and the output
    carries no Keras mask.
    """

    def __init__(self):
        super().__init__()
        self.supports_masking = True

    def compute_mask(self, *args, **kwargs):
        return None


class DotProductAttention(_Attention):
    attention_weights = _RecordedWeights()

    def __init__(self, dropout=0.0):
        super().__init__()
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.attention_weights = None
        self.built = True  # no weights: nothing for Keras to build on the first call

    def call(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, logit_cap=None,
             sinks=None, training=None):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, dot=True, batch_axes=2)
        d = queries.shape[-1]
        scores = tf.matmul(queries, keys, transpose_b=True) / math.sqrt(d)   # (b, q, k)
        if logit_cap is not None:
            cap = _checks.checked_logit_cap(logit_cap)
            scores = cap * tf.tanh(scores / cap)                             # soft-capped to (-cap, cap)
        if score_bias is not None:
            score_bias = tf.cast(score_bias, scores.dtype)
            _checks.check_score_bias(score_bias.shape, scores.shape)
            scores = scores + score_bias                                     # masked after: weight 0 there
        if sinks is None:
            self.attention_weights = masked_softmax(scores, valid_lens, mask=mask)
        else:
            self.attention_weights = _sink_softmax(scores, keep_mask(scores, valid_lens, mask), sinks)
        weights = self.dropout(self.attention_weights, training=training)
        return tf.matmul(weights, values)                                    # (b, q, dv)


def _sink_softmax(scores, keep, sinks):
    """Masked softmax with one more column per row, the sink's logit, dropped afterwards: the
    keys share what the sink leaves, and a row with no key left gives it everything."""
    sinks = tf.cast(sinks, scores.dtype)
    _checks.check_sinks(sinks.shape, scores.shape)
    sink = tf.broadcast_to(sinks, tf.shape(scores)[:-1])[..., None]          # (..., q, 1)
    keep = tf.ones_like(scores, tf.bool) if keep is None else tf.broadcast_to(keep, tf.shape(scores))
    weights = masked_softmax(tf.concat([scores, sink], -1),                  # (..., q, k + 1)
                             mask=tf.concat([keep, tf.ones_like(sink, tf.bool)], -1))
    return weights[..., :-1]                                                 # (..., q, k)


class AdditiveAttention(_Attention):
    attention_weights = _RecordedWeights()

    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.W_q = _dense_layer(_checks.checked_positive_int("query_size", query_size), h)
        self.W_k = _dense_layer(_checks.checked_positive_int("key_size", key_size), h)
        self.w_v = _dense_layer(h, 1)
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.attention_weights = None
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape,
                                 sizes={"queries": self.W_q.kernel.shape[0], "keys": self.W_k.kernel.shape[0]})
        q, k = self.W_q(queries), self.W_k(keys)                  # (b, q, h), (b, k, h)
        features = tf.tanh(q[:, :, None] + k[:, None])            # (b, q, k, h)
        scores = tf.squeeze(self.w_v(features), -1)               # (b, q, k)
        self.attention_weights = masked_softmax(scores, valid_lens, mask=mask)
        weights = self.dropout(self.attention_weights, training=training)
        return tf.matmul(weights, values)                         # (b, q, dv)


class MultiHeadAttention(_Attention):
    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 num_kv_heads=None, head_size=None, query_size=None, key_size=None, value_size=None):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_heads = _checks.checked_positive_int("num_heads", num_heads)
        self.head_size = _checks.checked_attention_head_size(h, self.num_heads, head_size)
        self.num_kv_heads = _checks.checked_kv_heads(self.num_heads, num_kv_heads)
        size = {x: h if s is None else _checks.checked_positive_int(f"{x}_size", s)
                for x, s in (("query", query_size), ("key", key_size), ("value", value_size))}
        self.W_q = _dense_layer(size["query"], self.num_heads * self.head_size, bias)
        self.W_k = _dense_layer(size["key"], self.num_kv_heads * self.head_size, bias)
        self.W_v = _dense_layer(size["value"], self.num_kv_heads * self.head_size, bias)
        self.W_o = _dense_layer(self.num_heads * self.head_size, h, bias)
        self.attention = DotProductAttention(dropout)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def _split_heads(self, X):
        b, n = tf.shape(X)[0], tf.shape(X)[1]                       # (b, n, heads * dh)
        X = tf.reshape(X, (b, n, X.shape[-1] // self.head_size, self.head_size))  # (b, n, heads, dh), static sizes
        return tf.transpose(X, (0, 2, 1, 3))                        # (b, heads, n, dh)

    def _attend(self, q, k, v, valid_lens=None, *, mask=None, score_bias=None, training=None, gate=None,
                **scoring):
        """Heads in, output out: q (b, heads, q, dh), k and v (b, kv_heads, k, dh) -> (b, q, num_hiddens).
        `gate` (b, heads, q, dh) multiplies each head's output before W_o; `scoring`: logit_cap, sinks."""
        group = self.num_heads // self.num_kv_heads
        k, v = tf.repeat(k, group, axis=1), tf.repeat(v, group, axis=1)   # (b, heads, k, dh): head h uses h // group
        out = self.attention(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training, **scoring)
        if gate is not None:
            out = out * gate                                        # (b, heads, q, dh)
        out = tf.transpose(out, (0, 2, 1, 3))                       # (b, q, heads, dh)
        b, n = tf.shape(out)[0], tf.shape(out)[1]
        return self.W_o(tf.reshape(out, (b, n, out.shape[2] * out.shape[3])))  # (b, q, num_hiddens)

    def call(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, training=None):
        sizes = {"queries": self.W_q.kernel.shape[0], "keys": self.W_k.kernel.shape[0],
                 "values": self.W_v.kernel.shape[0]}
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, sizes=sizes)
        if mask is not None:
            mask = tf.convert_to_tensor(mask)
            _checks.check_mask(mask.shape, (queries.shape[0], queries.shape[1], keys.shape[1]), mask.dtype)
        q = self._split_heads(self.W_q(queries))                         # (b, heads, q, dh)
        k = self._split_heads(self.W_k(keys))                            # (b, kv_heads, k, dh)
        v = self._split_heads(self.W_v(values))                          # (b, kv_heads, k, dh)
        if mask is not None and len(mask.shape) == 3:
            mask = tf.expand_dims(mask, 1)                          # (b, 1, q, k): every head
        return self._attend(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                     # (b, heads, q, k)


class ConcatAttention(_Attention):
    """Scores from Linear([q; k]) over `num_values` fixed slots (see d2lattn.api for its limits)."""

    attention_weights = _RecordedWeights()

    def __init__(self, query_size, key_size, num_values, value_size, output_size):
        super().__init__()
        self.sizes = {name: _checks.checked_positive_int(name, n) for name, n in (
            ("query_size", query_size), ("key_size", key_size), ("num_values", num_values),
            ("value_size", value_size), ("output_size", output_size))}
        self.W_attn = _dense_layer(query_size + key_size, num_values, bias=True)
        self.W_combine = _dense_layer(query_size + value_size, output_size, bias=True)
        self.attention_weights = None
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):  # no dropout
        _checks.check_concat_inputs(queries.shape, keys.shape, values.shape, self.sizes)
        scores = self.W_attn(tf.concat([queries, keys], -1))                     # (b, q, num_values)
        self.attention_weights = masked_softmax(scores, valid_lens, mask=mask)
        context = tf.matmul(self.attention_weights, values)                      # (b, q, value_size)
        return self.W_combine(tf.concat([queries, context], -1))                 # (b, q, output_size)
