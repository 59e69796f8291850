"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""

import numpy as np
import torch
from torch import nn

from d2lattn import _checks, sampling
from d2lattn.torch.attention import MultiHeadAttention
from d2lattn.torch.blocks import RMSNorm, SwiGLUFFN
from d2lattn.torch.encoding import RotaryPositionalEncoding
from d2lattn.torch.ops import causal_mask, to_numpy


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters (W_q, W_k, W_v, W_o) used on one sequence: rotary
    queries and keys at their absolute positions, a causal (sliding-window) mask, and the
    rotated keys and the values of every position so far kept as the cache."""

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, window=None, rope_base=10000.0,
                 dropout=0.0, bias=False):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads)
        self.window = _checks.window(window)
        self.rope = None if rope_base is None else RotaryPositionalEncoding(self.head_size, rope_base)

    def forward(self, X, *, cache=None, training=None):
        _checks.sequence_input(X.shape, self.W_q.in_features)
        _checks.cache(cache, X.shape[0], self.num_kv_heads, self.head_size)
        t = 0 if cache is None else cache[0].shape[2]                  # positions already cached
        q = self.split_heads(self.W_q(X))                              # (b, heads, T, dh)
        k = self.split_heads(self.W_k(X))                              # (b, kv_heads, T, dh)
        v = self.split_heads(self.W_v(X))                              # (b, kv_heads, T, dh)
        if self.rope is not None:
            q, k = self.rope(q, offset=t), self.rope(k, offset=t)      # rows are positions t .. t + T - 1
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # (b, kv_heads, t + T, dh)
        T = X.shape[1]
        mask = causal_mask(T, t + T, offset=t, window=self.window).to(X.device)  # (T, t + T): lower right
        out = self.attention(q, self.repeat_kv(k), self.repeat_kv(v), mask=mask, training=training)
        b, _, n, _ = out.shape                                         # (b, heads, T, dh)
        return self.W_o(out.transpose(1, 2).reshape(b, n, -1)), (k, v)  # (b, T, num_hiddens)


class TransformerLMBlock(nn.Module):
    """Pre-norm: X + attention(norm1(X)), then X + ffn(norm2(X))."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads=None, window=None,
                 rope_base=10000.0, dropout=0.0):
        super().__init__()
        self.norm1 = RMSNorm(num_hiddens)
        self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                             rope_base=rope_base, dropout=dropout)
        self.norm2 = RMSNorm(num_hiddens)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens)

    def forward(self, X, *, cache=None, training=None):
        Y, cache = self.attention(self.norm1(X), cache=cache, training=training)  # (b, T, h)
        X = X + Y
        return X + self.ffn(self.norm2(X)), cache                                  # (b, T, h)


class TransformerLM(nn.Module):
    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, window=None, rope_base=10000.0, dropout=0.0):
        super().__init__()
        v, h = _checks.positive_int("vocab_size", vocab_size), _checks.positive_int("num_hiddens", num_hiddens)
        self.embedding = nn.Embedding(v, h)
        self.blocks = nn.ModuleList(
            TransformerLMBlock(h, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads, window=window,
                               rope_base=rope_base, dropout=dropout)
            for _ in range(_checks.positive_int("num_layers", num_layers)))
        self.norm = RMSNorm(h)
        self.W_out = nn.Linear(h, v, bias=False)

    def forward(self, tokens, *, cache=None, training=None):
        tokens = torch.as_tensor(tokens, device=self.W_out.weight.device)
        _checks.tokens(tokens.shape, "tokens")
        X = self.embedding(tokens)                                   # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, [None] * len(self.blocks) if cache is None else cache):
            X, block_cache = block(X, cache=block_cache, training=training)
            caches.append(block_cache)
        return self.W_out(self.norm(X)), caches                      # (b, T, vocab)


@torch.no_grad()
def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """Without autograd, with training=False. With the cache each step feeds the model only the
    newest token; PyTorch runs eagerly, so nothing is traced or retraced."""
    tokens = np.asarray(prompt)                                      # (b, T0)
    _checks.tokens(tokens.shape, "prompt")
    rng = np.random.default_rng(seed)
    cache, new = None, tokens
    for _ in range(_checks.positive_int("num_tokens", num_tokens)):
        logits, step_cache = model(new if use_cache else tokens, cache=cache, training=False)  # (b, n, vocab)
        chosen = sampling.next_tokens(to_numpy(logits[:, -1]), temperature, rng)              # (b,)
        tokens = np.concatenate([tokens, chosen[:, None].astype(tokens.dtype)], 1)          # (b, T + 1)
        if use_cache:
            cache, new = step_cache, chosen[:, None]
    return tokens
