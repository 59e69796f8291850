"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate.

As in attention.py, `rngs` (keyword-only, default `nnx.Rngs(0)`) seeds the initial weights
and dropout. Under jit a cache that grows by one position per token would change shape at
every token, and JAX compiles once per shape; so `generate` keeps the cache in a buffer
preallocated for the whole sequence and passes the position as a traced scalar: the
`position` keyword of the calls below (not part of the contract, generate's alone). A windowed
layer's cache is a rolling buffer of window - 1 positions, fixed-size anyway.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from d2lattn import _checks, hub
from d2lattn.jax.attention import MultiHeadAttention, _deterministic
from d2lattn.jax.blocks import RMSNorm, SwiGLUFFN
from d2lattn.jax.encoding import RotaryPositionalEncoding
from d2lattn.jax.latent import MultiHeadLatentAttention
from d2lattn.jax.linear import GatedDeltaNet
from d2lattn.jax.ops import causal_mask
from d2lattn.jax.params import get_params, set_params
from d2lattn.sampling import next_tokens


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters, heads and `.attention_weights` on one sequence: rotary
    positions, a causal (sliding-window) mask, and a cache of the rotated keys and the values.

    `position` (keyword-only; generate's compiled steps): an int32 scalar, traced under jit.
    `cache` is then a preallocated (keys, values) buffer (b, num_kv_heads, L, head_size):
    X's keys and values are written at position .. position + T - 1, and the slots after
    them are masked by causality, so every step has the same shapes."""

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, head_size=None, window=None,
                 rope_base=10000.0, dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6,
                 rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads,
                         head_size=head_size, rngs=rngs)
        h, dh = self.W_q.in_features, self.head_size
        self.window = _checks.checked_window(window)
        self.logit_cap = _checks.checked_logit_cap(logit_cap)
        self.rotary = dh if rope_base is None else _checks.checked_rope_fraction(dh, rope_fraction)  # rotated
        self.rope = None if rope_base is None else RotaryPositionalEncoding(
            self.rotary, _checks.checked_positive_number("rope_base", rope_base), scaling=rope_scaling)
        if attention_bias:                                                    # Qwen2: on W_q, W_k, W_v, not W_o
            self.W_q, self.W_k, self.W_v = (nnx.Linear(d.in_features, d.out_features, rngs=rngs)
                                            for d in (self.W_q, self.W_k, self.W_v))
        self.q_norm = RMSNorm(dh, norm_eps) if qk_norm else None              # over each head's features
        self.k_norm = RMSNorm(dh, norm_eps) if qk_norm else None
        self.sinks = nnx.Param(jnp.zeros(self.num_heads)) if sinks else None  # (heads,): one logit each
        self.W_gate = (nnx.Linear(h, self.num_heads * dh, use_bias=False, rngs=rngs)
                       if output_gate else None)                      # (h, heads * dh)

    def _rotate(self, X, offset):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        r = self.rotary
        return jnp.concatenate([self.rope(X[..., :r], offset=offset), X[..., r:]], -1)  # (b, heads, T, dh)

    def __call__(self, X, *, cache=None, training=None, position=None):
        _checks.check_sequence_input(X.shape, self.W_q.in_features)
        _checks.check_cache(cache, X.shape[0], self.num_kv_heads, self.head_size, self.window)
        T = X.shape[1]
        start = _checks.cached_positions(cache) if position is None else position  # positions seen before
        q = self._split_heads(self.W_q(X))                                    # (b, heads, T, dh)
        k = self._split_heads(self.W_k(X))                                    # (b, kv_heads, T, dh)
        v = self._split_heads(self.W_v(X))                                    # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                             # per head, before the rotation
        if self.rope is not None:
            q, k = self._rotate(q, start), self._rotate(k, start)             # at their absolute positions
        if position is not None and self.window is None:
            k, v = (jax.lax.dynamic_update_slice_in_dim(c, x, position, axis=2) for c, x in zip(cache, (k, v)))
            mask = causal_mask(T, k.shape[2], offset=start)                   # (T, L): slots after X unseen
        else:
            if cache is not None:
                k, v = (jnp.concatenate([c, x], axis=2) for c, x in zip(cache[:2], (k, v)))  # (b, kv_heads, n, dh)
            n = k.shape[2]                                                    # cached + T
            mask = causal_mask(T, n, offset=n - T, window=self.window)        # (T, n): lower right
            mask = mask & (jnp.arange(n) >= n - T - start)                    # not a buffer's slots before 0
        gate = None if self.W_gate is None else self._split_heads(jax.nn.sigmoid(self.W_gate(X)))  # (b, heads, T, dh)
        sinks = None if self.sinks is None else self.sinks[...][:, None]      # (heads, 1): every row
        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, (k, v) if self.window is None else _rolled(k, v, self.window, start + T)  # (b, T, num_hiddens)


def _rolled(k, v, window, position):
    """A window's cache: the last window - 1 (at least one) keys and values (b, kv_heads, keep, dh),
    zeros in front of the first position, and the position the next call starts at. Nothing older
    is ever seen again, so its memory stays the same however long the sequence grows (and its
    shape too, so a compiled step serves every token)."""
    keep = max(window - 1, 1)                                          # one slot at least (window 1: always masked)
    k, v = (jnp.concatenate([jnp.zeros(x.shape[:2] + (keep,) + x.shape[3:], x.dtype), x], axis=2) for x in (k, v))
    return k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], position


class TransformerLMBlock(nnx.Module):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads, window, rope_base, dropout,
                 norm_eps, rngs, post_norms=False, ffn_activation="silu", attention="mha",
                 mla=None, gated_deltanet=None, **options):
        self.norm1 = RMSNorm(num_hiddens, norm_eps)
        if attention == "mla":   # DeepSeek's latent attention; the open-model options are CausalSelfAttention's
            self.attention = MultiHeadLatentAttention(num_hiddens, num_heads, rope_base=rope_base, dropout=dropout,
                                                      rngs=rngs, **mla)
        elif attention == "gated_deltanet":  # Qwen3-Next's linear layer: a state of constant size, no positions
            self.attention = GatedDeltaNet(num_hiddens, **{"num_heads": num_heads, "norm_eps": norm_eps,
                                                           **gated_deltanet})
        else:
            self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                                 rope_base=rope_base, dropout=dropout, norm_eps=norm_eps, rngs=rngs,
                                                 **options)
        self.norm2 = RMSNorm(num_hiddens, norm_eps)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens, activation=ffn_activation, rngs=rngs)
        self.post_norm1 = RMSNorm(num_hiddens, norm_eps) if post_norms else None  # Gemma: on each branch too
        self.post_norm2 = RMSNorm(num_hiddens, norm_eps) if post_norms else None
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)

    @staticmethod
    def _post(norm, Y):
        """A branch's output, through its post-norm where the block has one (Gemma 2 and 3)."""
        return Y if norm is None else norm(Y)

    def __call__(self, X, *, cache=None, training=None, position=None):
        drop = functools.partial(self.dropout, deterministic=_deterministic(training))
        Y, cache = self.attention(self.norm1(X), cache=cache, training=training, position=position)
        X = X + drop(self._post(self.post_norm1, Y))                          # (b, T, h)
        X = X + drop(self._post(self.post_norm2, self.ffn(self.norm2(X))))
        return X, cache


class TransformerLM(nnx.Module):
    """Children embedding (nnx.Embed), blocks (an nnx.List: names blocks.0. ...), norm, W_out
    (None when tied: the embedding's table then maps back to the vocabulary, nnx.Embed.attend)."""

    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, head_size=None, window=None, rope_base=10000.0, dropout=0.0, norm_eps=1e-6,
                 tie_embeddings=False, final_logit_cap=None, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, post_norms=False,
                 scale_embeddings=False, ffn_activation="silu", attention="mha", mla=None,
                 gated_deltanet=None, rngs=None):
        self.config = hub.arguments(locals())                         # what save_pretrained writes
        rngs = nnx.Rngs(0) if rngs is None else rngs
        layer = dict(norm_eps=norm_eps, post_norms=post_norms, ffn_activation=ffn_activation,
                     gated_deltanet=gated_deltanet)
        options = dict(head_size=head_size, qk_norm=qk_norm, sinks=sinks, output_gate=output_gate,
                       logit_cap=logit_cap, rope_fraction=rope_fraction, rope_scaling=rope_scaling,
                       attention_bias=attention_bias)
        vocab_size = _checks.checked_positive_int("vocab_size", vocab_size)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        L = _checks.checked_positive_int("num_layers", num_layers)
        kinds = _checks.checked_layer_kinds(attention, L, mla, gated_deltanet)  # one of LAYER_KINDS per layer
        self.embedding = nnx.Embed(vocab_size, h, rngs=rngs)
        self.embedding_scale = math.sqrt(h) if scale_embeddings else 1.0  # Gemma: times sqrt(h)
        self.blocks = nnx.List([
            TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads, window=w,
                               rope_base=base, dropout=dropout, rngs=rngs, attention=kind,
                               mla=mla, **layer, **options)
            for w, base, kind in zip(_checks.per_layer("window", window, L),
                                     _checks.per_layer("rope_base", rope_base, L), kinds)])
        self.norm = RMSNorm(h, norm_eps)
        self.W_out = None if tie_embeddings else nnx.Linear(h, vocab_size, use_bias=False, rngs=rngs)
        self.final_logit_cap = None if final_logit_cap is None else _checks.checked_positive_number(
            "final_logit_cap", final_logit_cap)

    def __call__(self, tokens, *, cache=None, training=None, position=None):
        tokens = jnp.asarray(tokens)
        _checks.check_tokens(tokens.shape, "tokens")
        _checks.check_lm_cache(cache, len(self.blocks))
        X = self.embedding(tokens) * self.embedding_scale                     # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, [None] * len(self.blocks) if cache is None else cache):
            X, block_cache = block(X, cache=block_cache, training=training, position=position)
            caches.append(block_cache)
        X = self.norm(X)
        logits = self.embedding.attend(X) if self.W_out is None else self.W_out(X)  # (b, T, vocab)
        if self.final_logit_cap is not None:
            logits = self.final_logit_cap * jnp.tanh(logits / self.final_logit_cap)  # soft-capped in (-cap, cap)
        return logits, caches                                                 # one cache per block


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _logits(graphdef, state, tokens, cache, position):
    """The model (nnx.merge(graphdef, state)) in evaluation mode, compiled once per shape. Plain
    jax.jit, not nnx.jit: nothing is written back into the module, so the attention weights it
    keeps (of the prompt's shape, then of one token's) never change the state the next step
    sees, and one compilation serves every step. The cache buffers are donated: XLA writes the
    new position into them in place instead of copying them at every token."""
    return nnx.merge(graphdef, state)(tokens, cache=cache, training=False, position=position)


def _buffers(attention, b, L):
    """A layer's empty cache for generate: (keys, values) (b, kv_heads, L, dh) for the whole
    sequence, or a window's rolling buffer of window - 1 positions, at position 0; a latent
    attention's (latents (b, L, r), rotary keys (b, L, dr)); a GatedDeltaNet's its state (conv, S),
    the same size at every position (it ignores `position`)."""
    if isinstance(attention, GatedDeltaNet):
        return attention.empty_cache(jnp.zeros((b, 0, attention.W_q.in_features)))
    if isinstance(attention, MultiHeadLatentAttention):
        return tuple(jnp.zeros((b, L, dict(attention.sizes)[n])) for n in ("kv_lora_rank", "qk_rope_head_size"))
    if attention.window is None:
        shape = (b, attention.num_kv_heads, L, attention.head_size)           # (b, kv_heads, L, dh)
        return jnp.zeros(shape), jnp.zeros(shape)
    shape = (b, attention.num_kv_heads, max(attention.window - 1, 1), attention.head_size)  # (b, kv_heads, keep, dh)
    return jnp.zeros(shape), jnp.zeros(shape), jnp.int32(0)


def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """Compiled, with no compilation per token: the tokens live in a (b, T0 + num_tokens) buffer.
    With the cache, each block's keys and values go into a buffer of that length too (a window's
    into its rolling buffer of window - 1 positions): the prompt in one call at position 0, then
    one token per call at a traced position. Without it, every step
    runs the model over the whole buffer (causal, so the slots not yet filled do not matter) and
    reads the logits at the last filled position."""
    prompt = np.asarray(prompt)
    _checks.check_tokens(prompt.shape, "prompt")
    num_tokens = _checks.checked_positive_int("num_tokens", num_tokens)
    (b, T0), L = prompt.shape, prompt.shape[1] + num_tokens
    tokens = np.zeros((b, L), np.int32)                                       # (b, T0 + num_tokens)
    tokens[:, :T0] = prompt
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(model)
    if use_cache:
        cache = [_buffers(block.attention, b, L) for block in model.blocks]
        logits, cache = _logits(graphdef, state, jnp.asarray(prompt), cache, jnp.int32(0))
    for t in range(T0, L):
        if use_cache and t > T0:
            logits, cache = _logits(graphdef, state, jnp.asarray(tokens[:, t - 1:t]), cache, jnp.int32(t - 1))
        elif not use_cache:
            logits, _ = _logits(graphdef, state, jnp.asarray(tokens), None, None)  # (b, L, vocab)
        last = logits[:, -1] if use_cache else logits[:, t - 1]              # (b, vocab)
        tokens[:, t] = next_tokens(np.asarray(last), temperature, rng)
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
