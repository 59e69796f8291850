"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate.

As everywhere in this backend, what needs shapes is made from concrete arrays before a
(possibly hybridized) graph runs: the lower-right causal mask, the positions of the new
tokens for the rotary encoding, and an empty cache (b, kv_heads, 0, dh) at the start, so the graph always
concatenates and keeps one input structure from the first token to the last.
"""

import math

import mxnet as mx
import numpy as onp
from mxnet import np
from mxnet.gluon import nn

from d2lattn import _checks, hub
from d2lattn.mxnet.attention import DENSE_INIT, MultiHeadAttention
from d2lattn.mxnet.blocks import RMSNorm, SwiGLUFFN
from d2lattn.mxnet.encoding import RotaryPositionalEncoding
from d2lattn.mxnet.latent import MultiHeadLatentAttention
from d2lattn.mxnet.linear import GatedDeltaNet
from d2lattn.mxnet.ops import _graph_keep, _traced, _train_mode, causal_mask, tensor, to_numpy
from d2lattn.mxnet.params import get_params, set_params
from d2lattn.mxnet.seq2seq import EMBEDDING_INIT
from d2lattn.sampling import next_tokens


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters and heads on one sequence: rotary positions, a causal
    (sliding-window) mask, and a cache of the rotated keys and the values seen so far.

    The call makes the graph's other inputs (`inputs`) and runs `with_keep`; a parent's graph
    calls `with_keep` with the inputs it made (one mask and one set of rotary positions for every layer).
    """

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, head_size=None, window=None,
                 rope_base=10000.0, dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads, head_size=head_size)
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
            self.W_gate = nn.Dense(self.num_heads * dh, use_bias=False, flatten=False, in_units=h)  # (h, heads * dh)
            self.W_gate.initialize(DENSE_INIT)

    def cache_inputs(self, batch, cache, ctx):
        """The cache checked, as (keys, values); an empty one (b, kv_heads, 0, dh) at the start."""
        _checks.check_cache(cache, batch, self.num_kv_heads, self.head_size, self.window)
        return tuple(cache[:2] if cache else 2 * (np.zeros((batch, self.num_kv_heads, 0, self.head_size), ctx=ctx),))

    def positions(self, T, cache, ctx):
        """(keep (T, n), (rotary positions,) or ()) for T new positions after those `cache` has seen, n
        the keys it holds and T: lower right, and none of a rolling buffer's slots before position 0."""
        t, n = _checks.cached_positions(cache), T + (0 if cache is None else cache[0].shape[2])
        keep = causal_mask(T, n, offset=n - T, window=self.window).asnumpy() & (onp.arange(n) >= n - T - t)
        keep = np.array(keep).as_in_ctx(ctx)                                         # (T, n)
        return keep, () if self.rope is None else (_rotary_positions(t, T, ctx),)  # t .. t + T - 1

    def graph_positions(self, X):
        """As `positions`, traced inside a parent's graph for a call without a cache: the causal mask
        of X's positions (axis 1), and those positions for the rotary block."""
        keep = _graph_keep(X, causal=True, window=self.window)                       # (T, T)
        return keep, () if self.rope is None else (mx.sym.npx.arange_like(X, axis=1),)

    def cached(self, keys, values, cache, T):
        """The cache a call hands back: (keys, values), or a window's buffer with its position."""
        return (keys, values) if self.window is None else (keys, values, _checks.cached_positions(cache) + T)

    def __call__(self, X, *, cache=None, training=None):
        if _traced(self, X, cache=cache):
            keys = values = None                                            # nothing cached
            keep, rotary = self.graph_positions(X)
        else:
            _checks.check_sequence_input(X.shape, self.W_q.weight.shape[1])       # Dense: (out, in)
            keys, values = self.cache_inputs(X.shape[0], cache, X.ctx)
            keep, rotary = self.positions(X.shape[1], cache, X.ctx)
        with _train_mode(training):
            Y, (keys, values) = self.with_keep(X, keys, values, keep, *rotary)
        return Y, (keys, values) if isinstance(X, mx.sym.Symbol) else self.cached(keys, values, cache, X.shape[1])

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
            k = F.np.concatenate([keys, k], axis=2)                         # (b, kv_heads, n = cached + T, dh)
            v = F.np.concatenate([values, v], axis=2)                       # (b, kv_heads, n, dh)
        gate = None if self.W_gate is None else self._split_heads(F, F.npx.sigmoid(self.W_gate(X)))  # (b, heads, T, dh)
        sinks = None if sinks is None else F.np.expand_dims(sinks, -1)      # (heads, 1): every row
        Y, weights, live = self._attend(F, q, k, v, keep, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        if self.window is not None:
            k, v = _rolled(F, k, v, self.window)                            # (b, kv_heads, window - 1, dh)
        return Y, k, v, weights, live


def _rotary_positions(t, T, ctx):
    """p = t, ..., t + T - 1, (T,) float64: the rotary encoding's positions of T new tokens."""
    return tensor(t + onp.arange(T), "float64").as_in_ctx(ctx)


def _rolled(F, k, v, window):
    """A window's cache: the last window - 1 (at least one) keys and values, zeros in front of the
    first position. Nothing older is ever seen again, so its memory stays the same however long
    the sequence grows."""
    keep = max(window - 1, 1)
    return tuple(F.np.concatenate([F.np.repeat(F.np.zeros_like(x[:, :, :1]), keep, axis=2), x], axis=2)[:, :, -keep:]
                 for x in (k, v))                                           # (b, kv_heads, keep, dh)


class TransformerLMBlock(nn.HybridBlock):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added. Runs inside its
    model's graph on its `inputs`: -> (X, keys, values, weights, live) for a softmax layer,
    (X, conv, S) for a GatedDeltaNet, whose state goes in and comes out as the keys and values do."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads, window, rope_base, dropout,
                 norm_eps, post_norms=False, ffn_activation="silu", attention="mha",
                 mla=None, gated_deltanet=None, **options):
        super().__init__()
        self.norm1 = RMSNorm(num_hiddens, norm_eps)
        if attention == "mla":   # DeepSeek's latent attention; the open-model options are CausalSelfAttention's
            self.attention = MultiHeadLatentAttention(num_hiddens, num_heads, rope_base=rope_base, dropout=dropout,
                                                      **mla)
        elif attention == "gated_deltanet":  # Qwen3-Next's linear layer: a state of constant size, no positions
            self.attention = GatedDeltaNet(num_hiddens, **{"num_heads": num_heads, "norm_eps": norm_eps,
                                                           **gated_deltanet})
        else:
            self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                                 rope_base=rope_base, dropout=dropout, norm_eps=norm_eps, **options)
        self.norm2 = RMSNorm(num_hiddens, norm_eps)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens, activation=ffn_activation)
        self.post_norm1 = RMSNorm(num_hiddens, norm_eps) if post_norms else None  # Gemma: on each branch too
        self.post_norm2 = RMSNorm(num_hiddens, norm_eps) if post_norms else None
        self.rate = _checks.checked_dropout_rate(dropout)
        self.linear = attention == "gated_deltanet"                     # a state, no positions, no weights
        # its attention's inputs and outputs in the graph: (conv, S) and (conv, S), or keys, values and
        # keep, and keys, values, weights and live
        self.num_inputs, self.num_outputs = (2, 2) if self.linear else (3, 4)
        self.rotary = not self.linear and self.attention.rope is not None  # it takes the rotary positions

    def inputs(self, batch, T, cache, ctx):
        """Its graph's inputs for T new tokens after `cache`, made before the graph: a softmax layer's
        cache as (keys, values) and its keep mask; a GatedDeltaNet's state (conv, S)."""
        if self.linear:
            return self.attention.cache_inputs(batch, cache, ctx)
        return (*self.attention.cache_inputs(batch, cache, ctx), self.attention.positions(T, cache, ctx)[0])

    def graph_inputs(self, tokens):
        """As `inputs`, traced inside a parent's graph for a call without a cache."""
        return (None, None) if self.linear else (None, None, self.attention.graph_positions(tokens)[0])

    def cached(self, outputs, cache, T):
        """Its cache from its attention's graph outputs (a softmax layer keeps its weights)."""
        if self.linear:
            return tuple(outputs)                                       # (conv, S)
        self.attention.save_weights(*outputs[2:])                       # (weights, live)
        if isinstance(outputs[0], mx.sym.Symbol):
            return tuple(outputs[:2])
        return self.attention.cached(*outputs[:2], cache, T)

    @staticmethod
    def _post(norm, Y):
        """A branch's output, through its post-norm where the block has one (Gemma 2 and 3)."""
        return Y if norm is None else norm(Y)

    def dropout(self, F, X):
        return F.npx.dropout(X, p=self.rate) if self.rate else X          # active only in training

    def hybrid_forward(self, F, X, *inputs):
        if self.linear:
            Y, cache = self.attention.with_state(self.norm1(X), *inputs)  # (conv, S) in and out
            saved = ()
        else:
            Y, cache = self.attention.with_keep(self.norm1(X), *inputs)   # keys, values, keep, rotary positions
            saved = getattr(self.attention, "attention", self.attention)._saved  # its DotProductAttention's, or MLA's
        X = X + self.dropout(F, self._post(self.post_norm1, Y))             # (b, T, h)
        X = X + self.dropout(F, self._post(self.post_norm2, self.ffn(self.norm2(X))))
        return (X, *cache, *saved)


class TransformerLM(nn.HybridBlock):
    """Embedding, pre-norm blocks `blocks.{i}`, a final RMSNorm and W_out, as one graph; tied,
    W_out is a Dense that shares the Embedding's table (both (vocab, h) in Gluon), named once.

    The call makes each block's inputs (its mask and its cache, or a GatedDeltaNet's state) and the
    rotary positions they share, flat, before the graph; the graph hands back each block's cache and
    attention weights (`blocks[i].attention.attention_weights` hold arrays after a hybridized call too).
    """

    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, head_size=None, window=None, rope_base=10000.0, dropout=0.0, norm_eps=1e-6,
                 tie_embeddings=False, final_logit_cap=None, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, post_norms=False,
                 scale_embeddings=False, ffn_activation="silu", attention="mha", mla=None,
                 gated_deltanet=None):
        super().__init__()
        self.config = hub.arguments(locals())                         # what save_pretrained writes
        layer = dict(norm_eps=norm_eps, post_norms=post_norms, ffn_activation=ffn_activation,
                     gated_deltanet=gated_deltanet)
        options = dict(head_size=head_size, qk_norm=qk_norm, sinks=sinks, output_gate=output_gate,
                       logit_cap=logit_cap, rope_fraction=rope_fraction, rope_scaling=rope_scaling,
                       attention_bias=attention_bias)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        L = _checks.checked_positive_int("num_layers", num_layers)
        kinds = _checks.checked_layer_kinds(attention, L, mla, gated_deltanet)  # one of LAYER_KINDS per layer
        self.embedding = nn.Embedding(v, h)
        self.embedding_scale = math.sqrt(h) if scale_embeddings else 1.0  # Gemma: times sqrt(h)
        self.embedding.initialize(EMBEDDING_INIT)
        self.blocks = nn.HybridSequential()
        for w, base, kind in zip(_checks.per_layer("window", window, L),
                                 _checks.per_layer("rope_base", rope_base, L), kinds):
            self.blocks.add(TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads,
                                               window=w, rope_base=base, dropout=dropout, attention=kind, mla=mla,
                                               **layer, **options))
        self.norm = RMSNorm(h, norm_eps)
        shared = {"prefix": self.embedding.prefix, "params": self.embedding.params} if tie_embeddings else {}
        self.W_out = nn.Dense(v, use_bias=False, flatten=False, in_units=h, **shared)
        if not tie_embeddings:
            self.W_out.initialize(DENSE_INIT)
        self.final_logit_cap = None if final_logit_cap is None else _checks.checked_positive_number(
            "final_logit_cap", final_logit_cap)

    def __call__(self, tokens, *, cache=None, training=None):
        if _traced(self, tokens, cache=cache):
            cache, T = [None] * len(self.blocks), None                      # nothing cached
            inputs = [block.graph_inputs(tokens) for block in self.blocks]
            positions = mx.sym.npx.arange_like(tokens, axis=1)
        else:
            tokens = tensor(tokens)
            _checks.check_tokens(tokens.shape, "tokens")
            _checks.check_lm_cache(cache, len(self.blocks))
            (b, T), ctx, cache = tokens.shape, tokens.ctx, cache or [None] * len(self.blocks)
            inputs = [block.inputs(b, T, c, ctx) for block, c in zip(self.blocks, cache)]
            seen = next((_checks.cached_positions(c) for block, c in zip(self.blocks, cache) if not block.linear), 0)
            positions = _rotary_positions(seen, T, ctx)                     # shared by every softmax block
        with _train_mode(training):
            logits, *rest = super().__call__(tokens, positions, *[a for block in inputs for a in block])
        caches = []
        for block, c in zip(self.blocks, cache):
            caches.append(block.cached(rest[:block.num_outputs], c, T))     # its cache, its weights kept
            rest = rest[block.num_outputs:]
        return logits, caches

    def hybrid_forward(self, F, tokens, positions, *args):
        X, out = self.embedding(tokens) * self.embedding_scale, []          # (b, T, h)
        for block in self.blocks:
            X, *saved = block(X, *args[:block.num_inputs], *((positions,) if block.rotary else ()))
            out, args = out + saved, args[block.num_inputs:]                # its cache, then its weights
        logits = self.W_out(self.norm(X))                                   # (b, T, vocab)
        if self.final_logit_cap is not None:
            logits = self.final_logit_cap * F.np.tanh(logits / self.final_logit_cap)  # soft-capped in (-cap, cap)
        return (logits, *out)                                               # then per block


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


def from_pretrained(path, *, dtype="float32"):
    """A TransformerLM with the weights of a Hugging Face model directory (`d2lattn.hub` reads it)."""
    kwargs, params = hub.load(path, dtype)
    model = TransformerLM(**kwargs)
    set_params(model, params)
    return model


def save_pretrained(model, path, *, family="llama"):
    """config.json and model.safetensors that transformers' AutoModelForCausalLM opens."""
    hub.save(model.config, get_params(model), path, family)
