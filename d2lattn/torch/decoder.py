"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks, hub
from d2lattn.sampling import next_tokens
from d2lattn.torch.attention import MultiHeadAttention
from d2lattn.torch.blocks import RMSNorm, SwiGLUFFN
from d2lattn.torch.encoding import RotaryPositionalEncoding
from d2lattn.torch.latent import MultiHeadLatentAttention
from d2lattn.torch.linear import GatedDeltaNet
from d2lattn.torch.ops import _threads_of_its_size, causal_mask, to_numpy
from d2lattn.torch.params import get_params, set_params


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters and heads on one sequence: rotary positions, a causal
    (sliding-window) mask, and a cache of the rotated keys and the values seen so far."""

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, head_size=None, window=None,
                 rope_base=10000.0, dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads, head_size=head_size)
        h, dh = self.W_q.in_features, self.head_size
        self.window = _checks.checked_window(window)
        self.logit_cap = _checks.checked_logit_cap(logit_cap)
        self.rotary = dh if rope_base is None else _checks.checked_rope_fraction(dh, rope_fraction)  # rotated
        self.rope = None if rope_base is None else RotaryPositionalEncoding(
            self.rotary, _checks.checked_positive_number("rope_base", rope_base), scaling=rope_scaling)
        if attention_bias:                                             # Qwen2: on W_q, W_k, W_v, not W_o
            for dense in (self.W_q, self.W_k, self.W_v):
                dense.bias = nn.Parameter(torch.zeros(dense.out_features))
        self.q_norm = RMSNorm(dh, norm_eps) if qk_norm else None       # over each head's features
        self.k_norm = RMSNorm(dh, norm_eps) if qk_norm else None
        self.sinks = nn.Parameter(torch.zeros(self.num_heads)) if sinks else None   # (heads,): one logit each
        self.W_gate = nn.Linear(h, self.num_heads * dh, bias=False) if output_gate else None  # (h, heads * dh)

    def _rotate(self, X, offset):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        r = self.rotary
        if r == X.shape[-1]:                                           # all of them (one call, no pieces)
            return self.rope(X, offset=offset)                         # (b, heads, T, dh)
        return torch.cat([self.rope(X[..., :r], offset=offset), X[..., r:]], -1)  # (b, heads, T, dh)

    def forward(self, X, *, cache=None, training=None):
        _checks.check_sequence_input(X.shape, self.W_q.in_features)
        _checks.check_cache(cache, X.shape[0], self.num_kv_heads, self.head_size, self.window)
        T, t = X.shape[1], _checks.cached_positions(cache)             # new positions, and those seen before
        q = self._split_heads(self.W_q(X))                             # (b, heads, T, dh)
        k = self._split_heads(self.W_k(X))                             # (b, kv_heads, T, dh)
        v = self._split_heads(self.W_v(X))                             # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                      # per head, before the rotation
        if self.rope is not None:
            qk = self._rotate(torch.cat([q, k], 1), t)                 # at positions t .. t + T - 1, one set
            q, k = qk.split([self.num_heads, self.num_kv_heads], 1)    # of angles for the queries and the keys
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # (b, kv_heads, n = cached + T, dh)
        n = k.shape[2]
        mask = causal_mask(T, n, offset=n - T, window=self.window).to(X.device)  # (T, n): lower right
        if n - T - t > 0:                                              # a rolling buffer's slots before position 0
            mask = mask & (torch.arange(n, device=X.device) >= n - T - t)  # are not keys
        gate = None if self.W_gate is None else self._split_heads(torch.sigmoid(self.W_gate(X)))  # (b, heads, T, dh)
        sinks = None if self.sinks is None else self.sinks.unsqueeze(1)         # (heads, 1): every row
        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, (k, v) if self.window is None else _rolled(k, v, self.window, t + T)  # (b, T, num_hiddens)


def _rolled(k, v, window, position):
    """A window's cache: the last window - 1 (at least one) keys and values (b, kv_heads, keep, dh),
    zeros in front of the first position, and the position the next call starts at. Nothing older
    is ever seen again, so its memory stays the same however long the sequence grows."""
    keep = max(window - 1, 1)                                          # one slot at least (window 1: always masked)
    k, v = (torch.cat([x.new_zeros(x.shape[:2] + (keep,) + x.shape[3:]), x], 2) for x in (k, v))
    return k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], position


class TransformerLMBlock(nn.Module):
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
        training = self.training if training is None else training
        Y, cache = self.attention(self.norm1(X), cache=cache, training=training)
        X = X + F.dropout(self._post(self.post_norm1, Y), self.rate, training)  # (b, T, h)
        Y = self.ffn(self.norm2(X))                                     # (b, T, h)
        X = X + F.dropout(self._post(self.post_norm2, Y), self.rate, training)
        return X, cache


class TransformerLM(nn.Module):
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
        self.blocks = nn.ModuleList(
            TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads, window=w,
                               rope_base=base, dropout=dropout, attention=kind, mla=mla, **layer, **options)
            for w, base, kind in zip(_checks.per_layer("window", window, L), _checks.per_layer(
                "rope_base", rope_base, L), kinds))
        self.norm = RMSNorm(h, norm_eps)
        self.W_out = None if tie_embeddings else nn.Linear(h, v, bias=False)
        self.final_logit_cap = None if final_logit_cap is None else _checks.checked_positive_number(
            "final_logit_cap", final_logit_cap)

    def forward(self, tokens, *, cache=None, training=None):
        tokens = torch.as_tensor(tokens, device=self.embedding.weight.device)
        _checks.check_tokens(tokens.shape, "tokens")
        _checks.check_lm_cache(cache, len(self.blocks))
        X = self.embedding(tokens) * self.embedding_scale              # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            X, block_cache = block(X, cache=block_cache, training=training)
            caches.append(block_cache)
        X = self.norm(X)
        # tied: the embedding's own (vocab, h) table maps back to the vocabulary, one parameter for both
        logits = X @ self.embedding.weight.T if self.W_out is None else self.W_out(X)  # (b, T, vocab)
        if self.final_logit_cap is not None:
            logits = self.final_logit_cap * torch.tanh(logits / self.final_logit_cap)  # soft-capped in (-cap, cap)
        return logits, caches                                          # one cache per block


@_threads_of_its_size  # one thread for a small model (d2lattn/torch/ops.py)
@torch.no_grad()
def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """Without autograd and with training=False. PyTorch runs eagerly, so nothing is traced:
    with the cache, each step feeds only the newest token."""
    tokens = np.asarray(prompt).astype(np.int32)                       # (b, T0)
    _checks.check_tokens(tokens.shape, "prompt")
    rng, new, cache = np.random.default_rng(seed), tokens, None
    for _ in range(_checks.checked_positive_int("num_tokens", num_tokens)):
        if use_cache:
            logits, cache = model(new, cache=cache, training=False)    # (b, len(new), vocab)
        else:
            logits, _ = model(tokens, training=False)                  # (b, T, vocab): everything again
        new = next_tokens(to_numpy(logits[:, -1]), temperature, rng)[:, None]  # (b, 1)
        tokens = np.concatenate([tokens, new], axis=1)                 # (b, T + 1)
    return tokens


def from_pretrained(path, *, dtype="float32"):
    """A TransformerLM with the weights of a Hugging Face model directory (`d2lattn.hub` reads it).
    Built on the meta device, so no initial weights are drawn only to be replaced (at SmolLM2-135M's
    size the draw took longer than reading the file); set_params then makes each parameter the
    file's tensor, read once, without a copy."""
    kwargs, params = hub.load(path, dtype)
    with torch.device("meta"):
        model = TransformerLM(**kwargs)
    set_params(model, params)
    return model


def save_pretrained(model, path, *, family="llama"):
    """config.json and model.safetensors that transformers' AutoModelForCausalLM opens."""
    hub.save(model.config, get_params(model), path, family)
