"""Scaled dot-product, additive and multi-head attention as flax.nnx modules.

`rngs` (keyword-only, default `nnx.Rngs(0)`) seeds the initial weights (its
`params` stream) and dropout (its `dropout` stream); an `nnx.Rngs(0)` serves
both. `training=None` follows the module's own state: `module.train()` /
`module.eval()` set nnx.Dropout's `deterministic` flag (modules start in
training mode, as nnx.Dropout does); True/False override it for one call.
"""

import math

import jax.numpy as jnp
from flax import errors, nnx

from d2lattn import _checks
from d2lattn.jax.ops import keep_mask, masked_softmax


def _deterministic(training):
    """nnx.Dropout's flag for `training`; None leaves it to the module's train/eval state."""
    return None if training is None else not training


def _record(variable, weights):
    """Keep `weights` in `variable` (an nnx.Intermediate) where the module's state may change at
    this trace level: in an eager call, and inside nnx transforms, which lift the module's state
    into their trace. Under a plain JAX transformation of a closure over the module the state
    belongs to an outer trace, nnx refuses the write, and the call keeps nothing."""
    try:
        variable.set_value(weights)
    except errors.TraceContextError:  # raised before anything is written, at trace time only
        pass


def _forget_weights(module):
    """Set the weights `module` recorded (its nnx.Intermediate variables) back to None. They are
    part of the state an nnx.jit function sees, shapes and all, so a call after one that recorded
    weights (none before it, or of another shape) would compile again; compiled steps call this
    first, and every call sees the state of the first."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Intermediate):
            node.set_value(None)


class DotProductAttention(nnx.Module):
    """Scaled dot-product attention: softmax(Q K^T / sqrt(d)) V.

    `.attention_weights` is the latest recorded call's weights (before dropout),
    a jax array, None before the first. They live in `self.last_weights`, an
    `nnx.Intermediate` variable, so they are part of the module's state: after
    a call under `nnx.jit` (or `nnx.grad`, `nnx.vmap`) nnx writes them back, and
    `.attention_weights` holds them as it does after an eager call. A closure
    over the module under plain `jax.jit`, `jax.grad` or `jax.vmap` computes the
    same outputs and gradients but cannot update the module, so that call records
    nothing; to get its weights out, pass `state` from `graphdef, state =
    nnx.split(module)`, `nnx.merge(graphdef, state)` inside, and return the
    merged module's `.attention_weights`. They are not parameters:
    `nnx.state(module, nnx.Param)` leaves them out.
    """

    def __init__(self, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)
        self.last_weights = nnx.Intermediate(None)

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, logit_cap=None,
                 sinks=None, training=None):
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, dot=True, batch_axes=2)
        d = queries.shape[-1]
        scores = queries @ jnp.swapaxes(keys, -1, -2) / math.sqrt(d)          # (b, q, k)
        if logit_cap is not None:
            cap = _checks.checked_logit_cap(logit_cap)
            scores = cap * jnp.tanh(scores / cap)                             # soft-capped to (-cap, cap)
        if score_bias is not None:
            score_bias = jnp.asarray(score_bias)
            _checks.check_score_bias(score_bias.shape, scores.shape)
            scores = scores + score_bias                                      # before masking: masked stays 0
        if sinks is None:
            weights = masked_softmax(scores, valid_lens, mask=mask)
        else:
            weights = _sink_softmax(scores, keep_mask(scores.shape, valid_lens, mask), sinks)
        _record(self.last_weights, weights)
        weights = self.dropout(weights, deterministic=_deterministic(training))
        return weights @ values                                               # (b, q, dv)

    @property
    def attention_weights(self):
        return self.last_weights.get_value()                                  # (b, q, k)


def _sink_softmax(scores, keep, sinks):
    """Masked softmax with one more column per row, the sink's logit, dropped afterwards: the
    keys share what the sink leaves, and a row with no key left gives it everything."""
    sinks = jnp.asarray(sinks, dtype=scores.dtype)
    _checks.check_sinks(sinks.shape, scores.shape)
    sink = jnp.broadcast_to(sinks, scores.shape[:-1])[..., None]              # (..., q, 1)
    keep = jnp.ones(scores.shape, bool) if keep is None else jnp.broadcast_to(keep, scores.shape)
    weights = masked_softmax(jnp.concatenate([scores, sink], -1),             # (..., q, k + 1)
                             mask=jnp.concatenate([keep, jnp.ones(sink.shape, bool)], -1))
    return weights[..., :-1]                                                  # (..., q, k)


class AdditiveAttention(nnx.Module):
    """Additive attention; `.attention_weights` as in DotProductAttention."""

    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.W_q = nnx.Linear(_checks.checked_positive_int("query_size", query_size), h, use_bias=False, rngs=rngs)
        self.W_k = nnx.Linear(_checks.checked_positive_int("key_size", key_size), h, use_bias=False, rngs=rngs)
        self.w_v = nnx.Linear(h, 1, use_bias=False, rngs=rngs)
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)
        self.last_weights = nnx.Intermediate(None)

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        return self._call_with_weights(queries, keys, values, valid_lens, mask=mask, training=training)[0]

    def _call_with_weights(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """The output and the weights it recorded (if it could): the seq2seq decoder keeps every
        step's weights, also where the module cannot record them (see _record)."""
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape,
                                 sizes={"queries": self.W_q.in_features, "keys": self.W_k.in_features})
        q, k = self.W_q(queries), self.W_k(keys)                          # (b, q, h), (b, k, h)
        features = jnp.tanh(q[:, :, None, :] + k[:, None, :, :])          # (b, q, k, h)
        scores = self.w_v(features)[..., 0]                               # (b, q, k)
        weights = masked_softmax(scores, valid_lens, mask=mask)
        _record(self.last_weights, weights)
        dropped = self.dropout(weights, deterministic=_deterministic(training))
        return dropped @ values, weights                                  # (b, q, dv), (b, q, k)

    @property
    def attention_weights(self):
        return self.last_weights.get_value()                              # (b, q, k)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention; `.attention_weights` (b, heads, q, k) as in DotProductAttention.
    With num_kv_heads < num_heads (grouped-query), W_k and W_v map to num_kv_heads heads."""

    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 num_kv_heads=None, head_size=None, query_size=None, key_size=None, value_size=None, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_heads = _checks.checked_positive_int("num_heads", num_heads)
        self.head_size = _checks.checked_attention_head_size(h, self.num_heads, head_size)
        self.num_kv_heads = _checks.checked_kv_heads(self.num_heads, num_kv_heads)
        size = {x: h if s is None else _checks.checked_positive_int(f"{x}_size", s)
                for x, s in (("query", query_size), ("key", key_size), ("value", value_size))}
        h_q, h_kv = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
        self.W_q = nnx.Linear(size["query"], h_q, use_bias=bias, rngs=rngs)
        self.W_k = nnx.Linear(size["key"], h_kv, use_bias=bias, rngs=rngs)
        self.W_v = nnx.Linear(size["value"], h_kv, use_bias=bias, rngs=rngs)
        self.W_o = nnx.Linear(h_q, h, use_bias=bias, rngs=rngs)
        self.attention = DotProductAttention(dropout, rngs=rngs)

    def _split_heads(self, X):
        b, n, _ = X.shape                                                     # (b, n, heads * dh)
        return X.reshape(b, n, -1, self.head_size).transpose(0, 2, 1, 3)      # (b, heads, n, dh)

    def _attend(self, q, k, v, valid_lens=None, *, mask=None, score_bias=None, training=None, gate=None,
                **scoring):
        """Heads in, output out: q (b, heads, q, dh), k and v (b, kv_heads, k, dh) -> (b, q, num_hiddens).
        `gate` (b, heads, q, dh) multiplies each head's output before W_o; `scoring`: logit_cap, sinks."""
        group = self.num_heads // self.num_kv_heads
        k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)   # (b, heads, k, dh): h uses h // group
        out = self.attention(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training, **scoring)
        if gate is not None:
            out = out * gate                                                  # (b, heads, q, dh)
        b, _, n, _ = out.shape                                                # (b, heads, q, dh)
        return self.W_o(out.transpose(0, 2, 1, 3).reshape(b, n, -1))          # (b, q, num_hiddens)

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, training=None):
        sizes = {"queries": self.W_q.in_features, "keys": self.W_k.in_features, "values": self.W_v.in_features}
        _checks.check_attention_inputs(queries.shape, keys.shape, values.shape, sizes=sizes)
        if mask is not None:
            mask = jnp.asarray(mask)
            _checks.check_mask(mask.shape, (queries.shape[0], queries.shape[1], keys.shape[1]), mask.dtype)
        q = self._split_heads(self.W_q(queries))                          # (b, heads, q, dh)
        k = self._split_heads(self.W_k(keys))                             # (b, kv_heads, k, dh)
        v = self._split_heads(self.W_v(values))                           # (b, kv_heads, k, dh)
        if mask is not None and mask.ndim == 3:
            mask = mask[:, None]                                          # (b, 1, q, k): every head
        return self._attend(q, k, v, valid_lens, mask=mask, score_bias=score_bias, training=training)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                           # (b, heads, q, k)


class ConcatAttention(nnx.Module):
    """Scores from Linear([q; k]) over `num_values` fixed slots (see d2lattn.api for its limits);
    `.attention_weights` (b, q, num_values) as in DotProductAttention."""

    def __init__(self, query_size, key_size, num_values, value_size, output_size, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.sizes = {name: _checks.checked_positive_int(name, n) for name, n in (
            ("query_size", query_size), ("key_size", key_size), ("num_values", num_values),
            ("value_size", value_size), ("output_size", output_size))}
        self.W_attn = nnx.Linear(query_size + key_size, num_values, rngs=rngs)
        self.W_combine = nnx.Linear(query_size + value_size, output_size, rngs=rngs)
        self.last_weights = nnx.Intermediate(None)

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):  # no dropout
        _checks.check_concat_inputs(queries.shape, keys.shape, values.shape, self.sizes)
        scores = self.W_attn(jnp.concatenate([queries, keys], -1))               # (b, q, num_values)
        weights = masked_softmax(scores, valid_lens, mask=mask)
        _record(self.last_weights, weights)
        context = weights @ values                                               # (b, q, value_size)
        return self.W_combine(jnp.concatenate([queries, context], -1))           # (b, q, output_size)

    @property
    def attention_weights(self):
        return self.last_weights.get_value()                                     # (b, q, num_values)
