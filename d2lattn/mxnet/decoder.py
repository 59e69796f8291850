"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate.

As everywhere in this backend, what needs shapes is made from concrete arrays before a
(possibly hybridized) graph runs: the lower-right causal mask, the positions of the new
tokens for the rotary encoding, and an empty cache (b, kv_heads, 0, dh) at the start, so the graph always
concatenates and keeps one input structure from the first token to the last.
"""

import mxnet as mx
import numpy as onp
from mxnet import np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.attention import DENSE_INIT, MultiHeadAttention
from d2lattn.mxnet.blocks import RMSNorm, SwiGLUFFN
from d2lattn.mxnet.encoding import RotaryPositionalEncoding
from d2lattn.mxnet.ops import _graph_keep, _traced, _train_mode, causal_mask, tensor, to_numpy
from d2lattn.mxnet.seq2seq import EMBEDDING_INIT
from d2lattn.sampling import next_tokens


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters and heads on one sequence: rotary positions, a causal
    (sliding-window) mask, and a cache of the rotated keys and the values seen so far.

    The call makes the graph's other inputs (`inputs`) and runs `with_keep`; a parent's graph
    calls `with_keep` with the inputs it made (one mask and one set of rotary positions for every layer).
    """

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, window=None, rope_base=10000.0,
                 dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False, logit_cap=None,
                 rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads)
        h, dh = self.W_q.weight.shape[1], self.head_size                    # Dense: (out, in)
        self.window = _checks.checked_window(window)
        self.logit_cap = _checks.checked_logit_cap(logit_cap)
        self.rotary = dh if rope_base is None else _checks.checked_rope_fraction(dh, rope_fraction)  # rotated
        self.rope = None if rope_base is None else RotaryPositionalEncoding(
            self.rotary, _checks.checked_positive_number("rope_base", rope_base), scaling=rope_scaling)
        if attention_bias and not bias:                                     # Qwen2: on W_q, W_k, W_v, not W_o
            for x in "qkv":
                out, size = getattr(self, f"W_{x}").weight.shape
                setattr(self, f"W_{x}", nn.Dense(out, use_bias=True, flatten=False, in_units=size))
                getattr(self, f"W_{x}").initialize(DENSE_INIT)
        self.q_norm = RMSNorm(dh, norm_eps) if qk_norm else None            # over each head's features
        self.k_norm = RMSNorm(dh, norm_eps) if qk_norm else None
        if sinks:
            self.sinks = self.params.get("sinks", shape=(self.num_heads,), init="zeros")  # (heads,): one logit each
            self.sinks.initialize()
        self.W_gate = None
        if output_gate:
            self.W_gate = nn.Dense(h, use_bias=False, flatten=False, in_units=h)  # (h, heads * dh)
            self.W_gate.initialize(DENSE_INIT)

    def cache_inputs(self, batch, cache, ctx):
        """The cache checked, as (keys, values); an empty one (b, kv_heads, 0, dh) at the start."""
        _checks.check_cache(cache, batch, self.num_kv_heads, self.head_size)
        return tuple(cache or 2 * (np.zeros((batch, self.num_kv_heads, 0, self.head_size), ctx=ctx),))

    def positions(self, T, t, ctx):
        """(keep (T, t + T), (rotary positions,) or ()) for T new positions after t cached ones."""
        keep = causal_mask(T, t + T, offset=t, window=self.window).as_in_ctx(ctx)   # lower right
        return keep, () if self.rope is None else (self.rope.positions(t, T, ctx),)  # t .. t + T - 1

    def graph_positions(self, X):
        """As `positions`, traced inside a parent's graph for a call without a cache: the causal mask
        of X's positions (axis 1), and those positions for the rotary block."""
        keep = _graph_keep(X, causal=True, window=self.window)                       # (T, T)
        return keep, () if self.rope is None else (mx.sym.npx.arange_like(X, axis=1),)

    def __call__(self, X, *, cache=None, training=None):
        if _traced(self, X, cache=cache):
            keys = values = None                                            # nothing cached
            keep, rotary = self.graph_positions(X)
        else:
            _checks.check_sequence_input(X.shape, self.W_q.weight.shape[1])       # Dense: (out, in)
            keys, values = self.cache_inputs(X.shape[0], cache, X.ctx)
            keep, rotary = self.positions(X.shape[1], keys.shape[2], X.ctx)
        with _train_mode(training):
            return self.with_keep(X, keys, values, keep, *rotary)

    def with_keep(self, X, keys, values, keep, *rotary):
        """The graph on ready inputs, as a parent's graph calls it: -> (Y, (keys, values))."""
        Y, keys, values, weights, live = nn.HybridBlock.__call__(self, X, keys, values, keep, *rotary)
        self.save_weights(weights, live)
        return Y, (keys, values)

    def _rotate(self, F, X, rotary):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        if self.rotary == self.head_size:
            return self.rope(X, offset=rotary)
        turned, kept = F.np.split(X, [self.rotary], axis=-1)                # (b, heads, T, r), (..., dh - r)
        return F.np.concatenate([self.rope(turned, offset=rotary), kept], axis=-1)  # (b, heads, T, dh)

    def hybrid_forward(self, F, X, keys, values, keep, *rotary, sinks=None):
        q = self._split_heads(F, self.W_q(X))               # (b, heads, T, dh)
        k = self._split_heads(F, self.W_k(X))            # (b, kv_heads, T, dh)
        v = self._split_heads(F, self.W_v(X))            # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                           # per head, before the rotation
        if self.rope is not None:
            q, k = self._rotate(F, q, rotary), self._rotate(F, k, rotary)   # rotated at their positions
        if keys is not None:                                                # None: traced without a cache
            k = F.np.concatenate([keys, k], axis=2)                         # (b, kv_heads, t + T, dh)
            v = F.np.concatenate([values, v], axis=2)                       # (b, kv_heads, t + T, dh)
        gate = None if self.W_gate is None else self._split_heads(F, F.npx.sigmoid(self.W_gate(X)))  # (b, heads, T, dh)
        sinks = None if sinks is None else F.np.expand_dims(sinks, -1)      # (heads, 1): every row
        Y, weights, live = self._attend(F, q, k, v, keep, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, k, v, weights, live


class TransformerLMBlock(nn.HybridBlock):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added. Runs inside its
    model's graph: -> (X, keys, values, weights, live)."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads, window, rope_base, dropout,
                 **options):
        super().__init__()
        self.norm1 = RMSNorm(num_hiddens)
        self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                             rope_base=rope_base, dropout=dropout, **options)
        self.norm2 = RMSNorm(num_hiddens)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens)
        self.rate = _checks.checked_dropout_rate(dropout)

    def dropout(self, F, X):
        return F.npx.dropout(X, p=self.rate) if self.rate else X          # active only in training

    def hybrid_forward(self, F, X, keys, values, keep, *rotary):
        Y, (keys, values) = self.attention.with_keep(self.norm1(X), keys, values, keep, *rotary)
        X = X + self.dropout(F, Y)                                          # (b, T, h)
        X = X + self.dropout(F, self.ffn(self.norm2(X)))
        return (X, keys, values, *self.attention.attention._saved)


class TransformerLM(nn.HybridBlock):
    """Embedding, pre-norm blocks `blocks.{i}`, a final RMSNorm and an untied W_out, as one graph.

    The call makes the inputs every block shares (mask, rotary positions) and each block's
    cache, flat, before the graph; the graph hands back each block's cache and attention
    weights (`blocks[i].attention.attention_weights` hold arrays after a hybridized call too).
    """

    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, window=None, rope_base=10000.0, dropout=0.0, qk_norm=False, sinks=False,
                 output_gate=False, logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False):
        super().__init__()
        options = dict(qk_norm=qk_norm, sinks=sinks, output_gate=output_gate, logit_cap=logit_cap,
                       rope_fraction=rope_fraction, rope_scaling=rope_scaling, attention_bias=attention_bias)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.embedding = nn.Embedding(v, h)
        self.embedding.initialize(EMBEDDING_INIT)
        self.blocks = nn.HybridSequential()
        for _ in range(_checks.checked_positive_int("num_layers", num_layers)):
            self.blocks.add(TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads,
                                               window=window, rope_base=rope_base, dropout=dropout, **options))
        self.norm = RMSNorm(h)
        self.W_out = nn.Dense(v, use_bias=False, flatten=False, in_units=h)
        self.W_out.initialize(DENSE_INIT)

    def __call__(self, tokens, *, cache=None, training=None):
        if _traced(self, tokens, cache=cache):
            caches = [(None, None)] * len(self.blocks)                      # nothing cached
            keep, rotary = self.blocks[0].attention.graph_positions(tokens)
        else:
            tokens = tensor(tokens)
            _checks.check_tokens(tokens.shape, "tokens")
            _checks.check_lm_cache(cache, len(self.blocks))
            (b, T), ctx = tokens.shape, tokens.ctx
            caches = [block.attention.cache_inputs(b, c, ctx)
                      for block, c in zip(self.blocks, cache or [None] * len(self.blocks))]
            keep, rotary = self.blocks[0].attention.positions(T, caches[0][0].shape[2], ctx)  # shared by every block
        with _train_mode(training):
            logits, *rest = super().__call__(tokens, keep, *rotary, *(a for c in caches for a in c))
        for i, block in enumerate(self.blocks):
            block.attention.save_weights(*rest[4 * i + 2: 4 * i + 4])          # (weights, live) of each
        return logits, [tuple(rest[4 * i: 4 * i + 2]) for i in range(len(self.blocks))]

    def hybrid_forward(self, F, tokens, keep, *args):
        rotary, caches = args[:len(args) - 2 * len(self.blocks)], args[len(args) - 2 * len(self.blocks):]
        X, out = self.embedding(tokens), []                                 # (b, T, h)
        for i, block in enumerate(self.blocks):
            X, *saved = block(X, caches[2 * i], caches[2 * i + 1], keep, *rotary)
            out += saved                                                    # keys, values, weights, live
        return (self.W_out(self.norm(X)), *out)                             # (b, T, vocab), then per block


def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """A Python loop over steps, each one call of the model. A hybridized model runs each call
    as the graph it traced on its first call: a new length re-infers shapes, never retraces;
    with the cache, each step feeds only the newest token."""
    tokens = onp.asarray(prompt).astype(onp.int32)                         # (b, T0)
    _checks.check_tokens(tokens.shape, "prompt")
    rng, new, cache = onp.random.default_rng(seed), tokens, None
    for _ in range(_checks.checked_positive_int("num_tokens", num_tokens)):
        if use_cache:
            logits, cache = model(tensor(new), cache=cache, training=False)  # (b, len(new), vocab)
        else:
            logits, _ = model(tensor(tokens), training=False)               # (b, T, vocab): everything again
        new = next_tokens(to_numpy(logits[:, -1]), temperature, rng)[:, None]  # (b, 1)
        tokens = onp.concatenate([tokens, new], axis=1)                     # (b, T + 1)
    return tokens
