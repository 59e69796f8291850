"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.attention import MultiHeadAttention, _init
from d2lattn.numpy.blocks import RMSNorm, SwiGLUFFN
from d2lattn.numpy.encoding import RotaryPositionalEncoding
from d2lattn.numpy.ops import causal_mask
from d2lattn.numpy.params import Module
from d2lattn.sampling import next_tokens


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters and heads on one sequence: rotary positions, a causal
    (sliding-window) mask, and a cache of the rotated keys and the values seen so far."""

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, window=None, rope_base=10000.0,
                 dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False, logit_cap=None,
                 rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads)
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
            self.params["W_gate"] = _init(np.random.default_rng(1), h, h)  # (h, heads * dh)

    def _rotate(self, X, offset):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        r = self.rotary
        return np.concatenate([self.rope(X[..., :r], offset=offset), X[..., r:]], -1)  # (b, heads, T, dh)

    def forward(self, X, *, cache=None, training=None):
        _checks.check_sequence_input(X.shape, self.params["W_q"].shape[0])
        _checks.check_cache(cache, X.shape[0], self.num_kv_heads, self.head_size)
        T, t = X.shape[1], 0 if cache is None else cache[0].shape[2]    # new and cached positions
        q = self._split_heads(self._dense(X, "q"))                     # (b, heads, T, dh)
        k = self._split_heads(self._dense(X, "k"))                     # (b, kv_heads, T, dh)
        v = self._split_heads(self._dense(X, "v"))                     # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                       # per head, before the rotation
        if self.rope is not None:
            q, k = self._rotate(q, t), self._rotate(k, t)               # at positions t .. t + T - 1
        if cache is not None:
            k = np.concatenate([cache[0], k], axis=2)                   # (b, kv_heads, t + T, dh)
            v = np.concatenate([cache[1], v], axis=2)                   # (b, kv_heads, t + T, dh)
        mask = causal_mask(T, t + T, offset=t, window=self.window)      # (T, t + T): lower right
        gate = None if "W_gate" not in self.params else self._split_heads(
            1 / (1 + np.exp(-X @ self.params["W_gate"])))               # (b, heads, T, dh): sigmoid(X W_gate)
        sinks = self.params["sinks"][:, None] if "sinks" in self.params else None  # (heads, 1): every row
        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, (k, v)                                                # (b, T, num_hiddens)


class TransformerLMBlock(Module):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads, window, rope_base, dropout,
                 **options):
        super().__init__()
        self.norm1 = RMSNorm(num_hiddens)
        self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                             rope_base=rope_base, dropout=dropout, **options)
        self.norm2 = RMSNorm(num_hiddens)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens)
        self.rate = _checks.checked_dropout_rate(dropout)

    def forward(self, X, *, cache=None, training=None):
        Y, cache = self.attention(self.norm1(X), cache=cache, training=training)
        X = X + self.dropout(Y, self.rate, training)                    # (b, T, h)
        X = X + self.dropout(self.ffn(self.norm2(X)), self.rate, training)
        return X, cache


class TransformerLM(Module):
    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, window=None, rope_base=10000.0, dropout=0.0, qk_norm=False, sinks=False,
                 output_gate=False, logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False):
        super().__init__()
        options = dict(qk_norm=qk_norm, sinks=sinks, output_gate=output_gate, logit_cap=logit_cap,
                       rope_fraction=rope_fraction, rope_scaling=rope_scaling, attention_bias=attention_bias)
        rng = np.random.default_rng(3)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.params = {"embedding": rng.normal(size=(v, h)), "W_out": _init(rng, h, v)}
        self.blocks = [TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads, window=window,
                                          rope_base=rope_base, dropout=dropout, **options)
                       for _ in range(_checks.checked_positive_int("num_layers", num_layers))]
        self.norm = RMSNorm(h)

    def forward(self, tokens, *, cache=None, training=None):
        _checks.check_tokens(np.shape(tokens), "tokens")
        _checks.check_lm_cache(cache, len(self.blocks))
        X = self.params["embedding"][np.asarray(tokens)]               # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            X, block_cache = block(X, cache=block_cache, training=training)
            caches.append(block_cache)
        return self.norm(X) @ self.params["W_out"], caches             # (b, T, vocab), one cache per block


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
