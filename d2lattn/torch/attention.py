"""Scaled dot-product, additive and multi-head attention as torch.nn modules."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks
from d2lattn.torch.ops import keep_mask, masked_softmax


def _record(module, like, **attributes):
    """Set `attributes` on `module` (what its `.attention_weights` reads), except where they would
    not outlive the call: under torch.export (an exported program changes no module), or when
    `like` is a tensor of a torch.func transformation (vmap, grad). Such a call keeps nothing.
    torch.compile replays the assignment with the tensors it computes, so a compiled call keeps
    its weights as an eager one does (the functorch check, which dynamo cannot trace, is skipped)."""
    if torch.compiler.is_exporting():
        return
    if torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(like):
        for name, value in attributes.items():
            setattr(module, name, value)


class DotProductAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + bias) V, with the output from PyTorch's fused kernel.

    `F.scaled_dot_product_attention` computes exactly masked_softmax(scores) @ V
    without keeping the (b, q, k) weights, and gives a row with nothing to
    attend to zeros. A `score_bias` goes in as its float `attn_mask`, with -inf
    where the keep-mask says no, so masked positions still get weight 0 (and an
    empty row zeros). `.attention_weights` are computed from the saved queries
    and keys only when read, so a call that nobody inspects does not pay for them.
    """

    def __init__(self, dropout=0.0):
        super().__init__()
        self.rate = _checks.checked_dropout_rate(dropout)
        self._saved, self._weights = None, None

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, logit_cap=None,
                sinks=None, training=None):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, dot=True, batch_axes=2)
        training = self.training if training is None else training
        scores_shape = (*queries.shape[:-1], keys.shape[-2])                  # (b, q, k)
        keep = keep_mask(scores_shape, valid_lens, mask, queries.device)      # broadcasts to it
        if score_bias is not None:
            score_bias = torch.as_tensor(score_bias, dtype=queries.dtype, device=queries.device)
            _checks.check_score_bias(score_bias.shape, scores_shape)
        if logit_cap is not None or sinks is not None:                        # no fused kernel takes them
            weights = _weights(queries, keys, keep, score_bias, _checks.checked_logit_cap(logit_cap), sinks)
            _record(self, weights, _saved=None, _weights=weights)
            return F.dropout(weights, self.rate, training) @ values            # (b, q, dv)
        attn_mask = keep
        if score_bias is not None:
            attn_mask = score_bias if keep is None else torch.where(keep, score_bias, -math.inf)
        out = F.scaled_dot_product_attention(                                 # (b, q, dv)
            queries, keys, values, attn_mask=attn_mask, dropout_p=self.rate if training else 0.0)
        _record(self, out, _saved=(queries, keys, keep, score_bias), _weights=None)   # out: from all of them
        return out

    @property
    def attention_weights(self):
        """(b, q, k): the weights of the last call, before dropout."""
        if self._weights is None and self._saved is not None:
            self._weights = _weights(*self._saved)
        return self._weights


def _weights(queries, keys, keep, score_bias, logit_cap=None, sinks=None):
    """masked_softmax of the scaled scores, soft-capped to (-cap, cap) before the bias and the mask;
    with `sinks`, one more column per row (the sink's logit) joins the softmax and is dropped."""
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])      # (b, q, k)
    if logit_cap is not None:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    if score_bias is not None:
        scores = scores + score_bias
    if sinks is None:
        return masked_softmax(scores, mask=keep)
    _checks.check_sinks(sinks.shape, scores.shape)
    sink = sinks.to(scores.dtype).expand(scores.shape[:-1]).unsqueeze(-1)         # (b, q, 1)
    keep = torch.ones_like(scores, dtype=torch.bool) if keep is None else keep.expand(scores.shape)
    keep = torch.cat([keep, torch.ones_like(sink, dtype=torch.bool)], -1)         # (b, q, k + 1): the sink always
    return masked_softmax(torch.cat([scores, sink], -1), mask=keep)[..., :-1]     # (b, q, k)


class AdditiveAttention(nn.Module):
    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.W_q = nn.Linear(_checks.checked_positive_int("query_size", query_size), h, bias=False)
        self.W_k = nn.Linear(_checks.checked_positive_int("key_size", key_size), h, bias=False)
        self.w_v = nn.Linear(h, 1, bias=False)
        self.rate = _checks.checked_dropout_rate(dropout)
        self.attention_weights = None

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        return self._call_with_weights(queries, keys, values, valid_lens, mask=mask, training=training)[0]

    def _call_with_weights(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """The output and the weights it recorded (if it could): the seq2seq decoder keeps every
        step's weights, also where the module cannot record them (see _record)."""
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape,
                                 sizes={"queries": self.W_q.in_features, "keys": self.W_k.in_features})
        training = self.training if training is None else training
        q, k = self.W_q(queries), self.W_k(keys)                  # (b, q, h), (b, k, h)
        features = torch.tanh(q.unsqueeze(2) + k.unsqueeze(1))    # (b, q, k, h)
        scores = self.w_v(features).squeeze(-1)                   # (b, q, k)
        weights = masked_softmax(scores, valid_lens, mask=mask)
        _record(self, weights, attention_weights=weights)
        return F.dropout(weights, self.rate, training) @ values, weights   # (b, q, dv), (b, q, k)


class MultiHeadAttention(nn.Module):
    """Grouped-query heads: W_k and W_v map to num_kv_heads heads, and each is
    repeated for the num_heads // num_kv_heads query heads of its group, so
    DotProductAttention sees one key head per query head."""

    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 num_kv_heads=None, head_size=None, query_size=None, key_size=None, value_size=None):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_heads = _checks.checked_positive_int("num_heads", num_heads)
        self.head_size = _checks.checked_attention_head_size(h, self.num_heads, head_size)
        self.num_kv_heads = _checks.checked_kv_heads(self.num_heads, num_kv_heads)
        h_q, h_kv = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
        size = {x: h if s is None else _checks.checked_positive_int(f"{x}_size", s)
                for x, s in (("query", query_size), ("key", key_size), ("value", value_size))}
        self.W_q = nn.Linear(size["query"], h_q, bias=bias)
        self.W_k = nn.Linear(size["key"], h_kv, bias=bias)
        self.W_v = nn.Linear(size["value"], h_kv, bias=bias)
        self.W_o = nn.Linear(h_q, h, bias=bias)
        self.attention = DotProductAttention(dropout)

    def _split_heads(self, X):
        b, n, _ = X.shape                                            # (b, n, heads * dh)
        return X.reshape(b, n, -1, self.head_size).transpose(1, 2)   # (b, heads, n, dh)

    def _attend(self, q, k, v, valid_lens=None, *, mask=None, score_bias=None, training=None, gate=None,
                **scoring):
        """Heads in, output out: q (b, heads, q, dh), k and v (b, kv_heads, k, dh) -> (b, q, num_hiddens).
        `gate` (b, heads, q, dh) multiplies each head's output before W_o; `scoring`: logit_cap, sinks."""
        group = self.num_heads // self.num_kv_heads
        # (b, kv_heads, group, k, dh) -> (b, heads, k, dh): head h reads kv head h // group (a view when group is 1)
        k, v = (x.unsqueeze(2).expand(-1, -1, group, -1, -1).flatten(1, 2) for x in (k, v))
        out = self.attention(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training, **scoring)
        if gate is not None:
            out = out * gate                                         # (b, heads, q, dh)
        b, _, n, _ = out.shape                                       # (b, heads, q, dh)
        return self.W_o(out.transpose(1, 2).reshape(b, n, -1))       # (b, q, num_hiddens)

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, training=None):
        sizes = {"queries": self.W_q.in_features, "keys": self.W_k.in_features, "values": self.W_v.in_features}
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, sizes=sizes)
        if mask is not None:
            mask = torch.as_tensor(mask)
            _checks.check_mask(mask.shape, (len(queries), queries.shape[1], keys.shape[1]), mask.dtype)
        q = self._split_heads(self.W_q(queries))                     # (b, heads, q, dh)
        k = self._split_heads(self.W_k(keys))                        # (b, kv_heads, k, dh)
        v = self._split_heads(self.W_v(values))                      # (b, kv_heads, k, dh)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)                                 # (b, 1, q, k): every head
        return self._attend(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                      # (b, heads, q, k)


class ConcatAttention(nn.Module):
    """Scores from Linear([q; k]) over `num_values` fixed slots (see d2lattn.api for its limits)."""

    def __init__(self, query_size, key_size, num_values, value_size, output_size):
        super().__init__()
        self.sizes = {name: _checks.checked_positive_int(name, n) for name, n in (
            ("query_size", query_size), ("key_size", key_size), ("num_values", num_values),
            ("value_size", value_size), ("output_size", output_size))}
        self.W_attn = nn.Linear(query_size + key_size, num_values)
        self.W_combine = nn.Linear(query_size + value_size, output_size)
        self.attention_weights = None

    def forward(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):  # no dropout
        _checks.check_concat_inputs(queries.shape, keys.shape, values.shape, self.sizes)
        scores = self.W_attn(torch.cat([queries, keys], -1))                     # (b, q, num_values)
        weights = masked_softmax(scores, valid_lens, mask=mask)
        _record(self, weights, attention_weights=weights)
        context = weights @ values                                               # (b, q, value_size)
        return self.W_combine(torch.cat([queries, context], -1))                 # (b, q, output_size)
