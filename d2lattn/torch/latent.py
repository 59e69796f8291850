"""Multi-head latent attention (DeepSeek-V2/V3): a cache of one low-rank latent and one shared
rotary key per token, read either by decompressing keys and values per head (naive) or by
folding the up-projections into the query and the output (absorbed)."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks
from d2lattn.torch.attention import _record
from d2lattn.torch.blocks import RMSNorm
from d2lattn.torch.encoding import RotaryPositionalEncoding
from d2lattn.torch.ops import causal_mask, masked_softmax


class MultiHeadLatentAttention(nn.Module):
    """Queries through W_q, or W_dq, q_norm and W_uq (q_lora_rank); keys and values from the
    latent c = kv_norm(X W_dkv) through W_uk and W_uv; one rotary key X W_kr shared by every head;
    W_o. Each head's query is its qk_nope_head_size features, then its qk_rope_head_size ones."""

    def __init__(self, num_hiddens, num_heads, *, kv_lora_rank, q_lora_rank=None, qk_nope_head_size,
                 qk_rope_head_size, v_head_size, rope_base=10000.0, norm_eps=1e-6, dropout=0.0, absorb=False):
        super().__init__()
        s = self.sizes = _checks.checked_latent_sizes(num_hiddens, num_heads, kv_lora_rank, q_lora_rank,
                                                      qk_nope_head_size, qk_rope_head_size, v_head_size)
        h, heads, r, dn, dr, dv = (s[n] for n in ("num_hiddens", "num_heads", "kv_lora_rank", "qk_nope_head_size",
                                                   "qk_rope_head_size", "v_head_size"))
        if s["q_lora_rank"] is None:
            self.W_q = nn.Linear(h, heads * (dn + dr), bias=False)
        else:
            self.W_dq = nn.Linear(h, s["q_lora_rank"], bias=False)
            self.q_norm = RMSNorm(s["q_lora_rank"], norm_eps)
            self.W_uq = nn.Linear(s["q_lora_rank"], heads * (dn + dr), bias=False)
        self.W_dkv = nn.Linear(h, r, bias=False)
        self.kv_norm = RMSNorm(r, norm_eps)
        self.W_kr = nn.Linear(h, dr, bias=False)
        self.W_uk = nn.Linear(r, heads * dn, bias=False)
        self.W_uv = nn.Linear(r, heads * dv, bias=False)
        self.W_o = nn.Linear(heads * dv, h, bias=False)
        self.rope = RotaryPositionalEncoding(dr, _checks.checked_positive_number("rope_base", rope_base))
        self.scale = 1 / math.sqrt(dn + dr)                                 # the query-key size of the naive heads
        self.rate = _checks.checked_dropout_rate(dropout)
        self.absorb = bool(absorb)
        self.attention_weights = None

    def _queries(self, X):
        """(b, T, h) -> (b, heads, T, qk_nope_head_size + qk_rope_head_size)."""
        q = self.W_q(X) if self.sizes["q_lora_rank"] is None else self.W_uq(self.q_norm(self.W_dq(X)))
        b, T, _ = q.shape                                                   # (b, T, heads * (dn + dr))
        return q.reshape(b, T, self.sizes["num_heads"], -1).transpose(1, 2)

    def forward(self, X, *, cache=None, training=None):
        s = self.sizes
        _checks.check_sequence_input(X.shape, s["num_hiddens"])
        _checks.check_latent_cache(cache, X.shape[0], s["kv_lora_rank"], s["qk_rope_head_size"])
        training = self.training if training is None else training
        (b, T, _), t = X.shape, 0 if cache is None else cache[0].shape[1]   # new and cached positions
        heads, dn, dv = s["num_heads"], s["qk_nope_head_size"], s["v_head_size"]
        q_nope, q_rope = self._queries(X).split([dn, s["qk_rope_head_size"]], -1)  # (b, heads, T, dn), (.., dr)
        q_rope = self.rope(q_rope, offset=t)                                # at positions t .. t + T - 1
        c = self.kv_norm(self.W_dkv(X))                                     # (b, T, r): the latent
        k_rope = self.rope(self.W_kr(X), offset=t)                          # (b, T, dr): one rotary key for all heads
        if cache is not None:
            c, k_rope = torch.cat([cache[0], c], 1), torch.cat([cache[1], k_rope], 1)  # (b, t + T, r), (.., dr)
        rope_scores = torch.einsum("bhtd,bsd->bhts", q_rope, k_rope)        # (b, heads, T, t + T)
        W_uk = self.W_uk.weight.reshape(heads, dn, -1)                      # (heads, dn, r): nn.Linear is (out, in)
        W_uv = self.W_uv.weight.reshape(heads, dv, -1)                      # (heads, dv, r)
        if self.absorb:  # q_nope W_uk^T is each head's query in latent space: scores against c itself
            q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, W_uk)         # (b, heads, T, r)
            scores = torch.einsum("bhtr,bsr->bhts", q_latent, c)            # (b, heads, T, t + T)
        else:  # decompress every cached latent into each head's keys
            k_nope = torch.einsum("bsr,hnr->bhsn", c, W_uk)                 # (b, heads, t + T, dn)
            scores = q_nope @ k_nope.transpose(2, 3)                        # (b, heads, T, t + T)
        mask = causal_mask(T, t + T, offset=t).to(X.device)                 # (T, t + T): lower right
        weights = masked_softmax((scores + rope_scores) * self.scale, mask=mask)
        _record(self, weights, attention_weights=weights)
        weights = F.dropout(weights, self.rate, training)
        if self.absorb:  # average the latents, then decompress once per head and query
            latent = torch.einsum("bhts,bsr->bhtr", weights, c)            # (b, heads, T, r)
            out = torch.einsum("bhtr,hvr->bthv", latent, W_uv)              # (b, T, heads, dv)
        else:
            v = torch.einsum("bsr,hvr->bhsv", c, W_uv)                      # (b, heads, t + T, dv)
            out = (weights @ v).transpose(1, 2)                             # (b, T, heads, dv)
        return self.W_o(out.reshape(b, T, -1)), (c, k_rope)                 # (b, T, h), the cache
