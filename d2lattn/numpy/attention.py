"""Scaled dot-product, additive and multi-head attention: the math, in float64."""

import math

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.ops import keep_mask, masked_softmax
from d2lattn.numpy.params import Module


def _init(rng, fan_in, fan_out):
    """Uniform in +-1/sqrt(fan_in), the usual default for a dense map."""
    bound = 1 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, (fan_in, fan_out))


class DotProductAttention(Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.rate = _checks.checked_dropout_rate(dropout)
        self.attention_weights = None

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, logit_cap=None,
                sinks=None, training=None):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, dot=True, batch_axes=2)
        d = queries.shape[-1]
        scores = queries @ np.swapaxes(keys, -1, -2) / math.sqrt(d)      # (b, q, k)
        if logit_cap is not None:
            cap = _checks.checked_logit_cap(logit_cap)
            scores = cap * np.tanh(scores / cap)                         # soft-capped to (-cap, cap)
        if score_bias is not None:
            score_bias = np.asarray(score_bias)
            _checks.check_score_bias(score_bias.shape, scores.shape)
            scores = scores + score_bias                                 # masking still wins below
        if sinks is None:
            self.attention_weights = masked_softmax(scores, valid_lens, mask=mask)
        else:
            self.attention_weights = _sink_softmax(scores, keep_mask(scores.shape, valid_lens, mask), sinks)
        return self.dropout(self.attention_weights, self.rate, training) @ values  # (b, q, dv)


def _sink_softmax(scores, keep, sinks):
    """Masked softmax with one more column per row, the sink's logit, dropped afterwards: the
    keys share what the sink leaves, and a row with no key left gives it everything."""
    sinks = np.asarray(sinks)
    _checks.check_sinks(sinks.shape, scores.shape)
    sink = np.broadcast_to(sinks, scores.shape[:-1])[..., None]        # (..., q, 1)
    keep = np.broadcast_to(keep, scores.shape)                          # (..., q, k)
    weights = masked_softmax(np.concatenate([scores, sink], -1),        # (..., q, k + 1)
                             mask=np.concatenate([keep, np.ones_like(sink, dtype=bool)], -1))
    return weights[..., :-1]                                            # (..., q, k)


class AdditiveAttention(Module):
    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        super().__init__()
        rng = np.random.default_rng(0)  # deterministic; load real weights with set_params
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.params = {
            "W_q": _init(rng, _checks.checked_positive_int("query_size", query_size), h),
            "W_k": _init(rng, _checks.checked_positive_int("key_size", key_size), h),
            "w_v": _init(rng, h, 1),
        }
        self.rate = _checks.checked_dropout_rate(dropout)
        self.attention_weights = None

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape,
                                 sizes={"queries": self.params["W_q"].shape[0], "keys": self.params["W_k"].shape[0]})
        p = self.params
        q = queries @ p["W_q"]                                   # (b, q, h)
        k = keys @ p["W_k"]                                      # (b, k, h)
        features = np.tanh(q[:, :, None, :] + k[:, None, :, :])  # (b, q, k, h)
        scores = (features @ p["w_v"])[..., 0]                   # (b, q, k)
        self.attention_weights = masked_softmax(scores, valid_lens, mask=mask)
        return self.dropout(self.attention_weights, self.rate, training) @ values  # (b, q, dv)


class MultiHeadAttention(Module):
    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 num_kv_heads=None, head_size=None, query_size=None, key_size=None, value_size=None):
        super().__init__()
        rng = np.random.default_rng(0)  # deterministic; load real weights with set_params
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_heads = _checks.checked_positive_int("num_heads", num_heads)
        self.head_size = _checks.checked_attention_head_size(h, self.num_heads, head_size)
        self.num_kv_heads = _checks.checked_kv_heads(self.num_heads, num_kv_heads)
        hq, kv = self.num_heads * self.head_size, self.num_kv_heads * self.head_size  # kv heads share columns
        sizes = {"q": ("query_size", query_size, hq), "k": ("key_size", key_size, kv),
                 "v": ("value_size", value_size, kv), "o": ("num_heads * head_size", hq, h)}
        for x, (name, size, out) in sizes.items():
            self.params[f"W_{x}"] = _init(rng, h if size is None else _checks.checked_positive_int(name, size), out)
        if bias:
            self.params.update({f"b_{x}": np.zeros(out) for x, (_, _, out) in sizes.items()})
        self.attention = DotProductAttention(dropout)

    def _dense(self, X, x):
        return X @ self.params[f"W_{x}"] + self.params.get(f"b_{x}", 0.0)

    def _split_heads(self, X):
        b, n, _ = X.shape                                          # (b, n, heads * dh)
        X = X.reshape(b, n, -1, self.head_size)                    # (b, n, heads, dh)
        return X.transpose(0, 2, 1, 3)                             # (b, heads, n, dh)

    def _attend(self, q, k, v, valid_lens=None, *, mask=None, score_bias=None, training=None, gate=None,
                **scoring):
        """Heads in, output out: q (b, heads, q, dh), k and v (b, kv_heads, k, dh) -> (b, q, num_hiddens).
        `gate` (b, heads, q, dh) multiplies each head's output before W_o; `scoring`: logit_cap, sinks."""
        group = self.num_heads // self.num_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (b, heads, k, dh): head h uses h // group
        out = self.attention(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training, **scoring)
        if gate is not None:
            out = out * gate                                       # (b, heads, q, dh)
        b, _, n, _ = out.shape                                     # (b, heads, q, dh)
        out = out.transpose(0, 2, 1, 3).reshape(b, n, -1)          # (b, q, num_hiddens)
        return self._dense(out, "o")

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, training=None):
        sizes = {"queries": self.params["W_q"].shape[0], "keys": self.params["W_k"].shape[0],
                 "values": self.params["W_v"].shape[0]}
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, sizes=sizes)
        if mask is not None:
            mask = np.asarray(mask)
            _checks.check_mask(mask.shape, (len(queries), queries.shape[1], keys.shape[1]), mask.dtype)
        q = self._split_heads(self._dense(queries, "q"))                     # (b, heads, q, dh)
        k = self._split_heads(self._dense(keys, "k"))                        # (b, kv_heads, k, dh)
        v = self._split_heads(self._dense(values, "v"))                      # (b, kv_heads, k, dh)
        if mask is not None and mask.ndim == 3:
            mask = mask[:, None]                                   # (b, 1, q, k): every head
        return self._attend(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                    # (b, heads, q, k)


class ConcatAttention(Module):
    """Scores from Linear([q; k]) over `num_values` fixed slots (see d2lattn.api for its limits)."""

    def __init__(self, query_size, key_size, num_values, value_size, output_size):
        super().__init__()
        rng = np.random.default_rng(0)
        self.sizes = {name: _checks.checked_positive_int(name, n) for name, n in (
            ("query_size", query_size), ("key_size", key_size), ("num_values", num_values),
            ("value_size", value_size), ("output_size", output_size))}
        self.params = {
            "W_attn": _init(rng, query_size + key_size, num_values), "b_attn": np.zeros(num_values),
            "W_combine": _init(rng, query_size + value_size, output_size), "b_combine": np.zeros(output_size),
        }
        self.attention_weights = None

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        _checks.check_concat_inputs(queries.shape, keys.shape, values.shape, self.sizes)
        p = self.params
        scores = np.concatenate([queries, keys], -1) @ p["W_attn"] + p["b_attn"]   # (b, q, num_values)
        self.attention_weights = masked_softmax(scores, valid_lens, mask=mask)
        context = self.attention_weights @ values                                # (b, q, value_size)
        return np.concatenate([queries, context], -1) @ p["W_combine"] + p["b_combine"]  # (b, q, output_size)
