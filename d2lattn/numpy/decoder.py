"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""

import math

import numpy as np

from d2lattn import _checks, hub
from d2lattn.numpy.attention import MultiHeadAttention, _init
from d2lattn.numpy.blocks import RMSNorm, SwiGLUFFN
from d2lattn.numpy.encoding import RotaryPositionalEncoding
from d2lattn.numpy.latent import MultiHeadLatentAttention
from d2lattn.numpy.linear import GatedDeltaNet
from d2lattn.numpy.ops import causal_mask
from d2lattn.numpy.params import Module, get_params, set_params
from d2lattn.sampling import next_tokens


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters and heads on one sequence: rotary positions, a causal
    (sliding-window) mask, and a cache of the rotated keys and the values seen so far."""

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, head_size=None, window=None,
                 rope_base=10000.0, dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads, head_size=head_size)
        h, dh = self.params["W_q"].shape[0], self.head_size
        self.window = _checks.checked_window(window)
        self.logit_cap = _checks.checked_logit_cap(logit_cap)
        self.rotary = dh if rope_base is None else _checks.checked_rope_fraction(dh, rope_fraction)  # rotated
        self.rope = None if rope_base is None else RotaryPositionalEncoding(
            self.rotary, _checks.checked_positive_number("rope_base", rope_base), scaling=rope_scaling)
        if attention_bias:                                              # Qwen2: on W_q, W_k, W_v, not W_o
            self.params.update({f"b_{x}": np.zeros(self.params[f"W_{x}"].shape[1]) for x in "qkv"})
        self.q_norm = RMSNorm(dh, norm_eps) if qk_norm else None        # over each head's features
        self.k_norm = RMSNorm(dh, norm_eps) if qk_norm else None
        if sinks:
            self.params["sinks"] = np.zeros(self.num_heads)             # (heads,): one logit per head
        if output_gate:
            self.params["W_gate"] = _init(np.random.default_rng(1), h, self.num_heads * dh)  # (h, heads * dh)

    def _rotate(self, X, offset):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        r = self.rotary
        return np.concatenate([self.rope(X[..., :r], offset=offset), X[..., r:]], -1)  # (b, heads, T, dh)

    def forward(self, X, *, cache=None, training=None):
        _checks.check_sequence_input(X.shape, self.params["W_q"].shape[0])
        _checks.check_cache(cache, X.shape[0], self.num_kv_heads, self.head_size, self.window)
        T, t = X.shape[1], _checks.cached_positions(cache)              # new positions, and those seen before
        q = self._split_heads(self._dense(X, "q"))                     # (b, heads, T, dh)
        k = self._split_heads(self._dense(X, "k"))                     # (b, kv_heads, T, dh)
        v = self._split_heads(self._dense(X, "v"))                     # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                       # per head, before the rotation
        if self.rope is not None:
            q, k = self._rotate(q, t), self._rotate(k, t)               # at positions t .. t + T - 1
        if cache is not None:
            k = np.concatenate([cache[0], k], axis=2)                   # (b, kv_heads, n = cached + T, dh)
            v = np.concatenate([cache[1], v], axis=2)                   # (b, kv_heads, n, dh)
        n = k.shape[2]
        mask = causal_mask(T, n, offset=n - T, window=self.window)      # (T, n): lower right
        mask = mask & (np.arange(n) >= n - T - t)                       # not a buffer's slots before position 0
        gate = None if "W_gate" not in self.params else self._split_heads(
            1 / (1 + np.exp(-X @ self.params["W_gate"])))               # (b, heads, T, dh): sigmoid(X W_gate)
        sinks = self.params["sinks"][:, None] if "sinks" in self.params else None  # (heads, 1): every row
        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, (k, v) if self.window is None else _rolled(k, v, self.window, t + T)  # (b, T, num_hiddens)


def _rolled(k, v, window, position):
    """A window's cache: the last window - 1 (at least one) keys and values (b, kv_heads, keep, dh),
    zeros in front of the first position, and the position the next call starts at. Nothing older
    is ever seen again, so its memory stays the same however long the sequence grows."""
    keep = max(window - 1, 1)                                          # one slot at least (window 1: always masked)
    k, v = (np.concatenate([np.zeros(x.shape[:2] + (keep,) + x.shape[3:]), x], axis=2) for x in (k, v))
    return k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], position


class TransformerLMBlock(Module):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added."""

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

    @staticmethod
    def _post(norm, Y):
        """A branch's output, through its post-norm where the block has one (Gemma 2 and 3)."""
        return Y if norm is None else norm(Y)

    def forward(self, X, *, cache=None, training=None):
        Y, cache = self.attention(self.norm1(X), cache=cache, training=training)
        X = X + self.dropout(self._post(self.post_norm1, Y), self.rate, training)  # (b, T, h)
        Y = self.ffn(self.norm2(X))                                     # (b, T, h)
        X = X + self.dropout(self._post(self.post_norm2, Y), self.rate, training)
        return X, cache


class TransformerLM(Module):
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
        rng = np.random.default_rng(3)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        L = _checks.checked_positive_int("num_layers", num_layers)
        kinds = _checks.checked_layer_kinds(attention, L, mla, gated_deltanet)  # one of LAYER_KINDS per layer
        self.params = {"embedding": rng.normal(size=(v, h))}
        self.embedding_scale = math.sqrt(h) if scale_embeddings else 1.0  # Gemma: times sqrt(h)
        if not tie_embeddings:
            self.params["W_out"] = _init(rng, h, v)
        self.blocks = [TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads, window=w,
                                          rope_base=base, dropout=dropout, attention=kind, mla=mla,
                                          **layer, **options)
                       for w, base, kind in zip(_checks.per_layer("window", window, L),
                                          _checks.per_layer("rope_base", rope_base, L), kinds)]
        self.norm = RMSNorm(h, norm_eps)
        self.final_logit_cap = None if final_logit_cap is None else _checks.checked_positive_number(
            "final_logit_cap", final_logit_cap)

    def forward(self, tokens, *, cache=None, training=None):
        _checks.check_tokens(np.shape(tokens), "tokens")
        _checks.check_lm_cache(cache, len(self.blocks))
        X = self.params["embedding"][np.asarray(tokens)] * self.embedding_scale               # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            X, block_cache = block(X, cache=block_cache, training=training)
            caches.append(block_cache)
        W_out = self.params.get("W_out", self.params["embedding"].T)   # (h, vocab): tied, the embedding's transpose
        logits = self.norm(X) @ W_out                                  # (b, T, vocab)
        if self.final_logit_cap is not None:
            logits = self.final_logit_cap * np.tanh(logits / self.final_logit_cap)  # soft-capped in (-cap, cap)
        return logits, caches                                          # one cache per block


def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """The reference runs eagerly: with the cache, each step feeds only the newest token."""
    tokens = np.asarray(prompt).astype(np.int32)                       # (b, T0)
    _checks.check_tokens(tokens.shape, "prompt")
    rng, new, cache = np.random.default_rng(seed), tokens, None
    for _ in range(_checks.checked_positive_int("num_tokens", num_tokens)):
        if use_cache:
            logits, cache = model(new, cache=cache, training=False)    # (b, len(new), vocab)
        else:
            logits, _ = model(tokens, training=False)                  # (b, T, vocab): everything again
        new = next_tokens(logits[:, -1], temperature, rng)[:, None]    # (b, 1)
        tokens = np.concatenate([tokens, new], axis=1)                 # (b, T + 1)
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
