"""Multi-head latent attention (DeepSeek-V2/V3): a cache of one low-rank latent and one shared
rotary key per token, read either by decompressing keys and values per head (naive) or by
folding the up-projections into the query and the output (absorbed)."""

import math

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.attention import _init
from d2lattn.numpy.blocks import RMSNorm
from d2lattn.numpy.encoding import RotaryPositionalEncoding
from d2lattn.numpy.ops import causal_mask, masked_softmax
from d2lattn.numpy.params import Module


class MultiHeadLatentAttention(Module):
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
        rng = np.random.default_rng(0)  # deterministic; load real weights with set_params
        if s["q_lora_rank"] is None:
            self.params = {"W_q": _init(rng, h, heads * (dn + dr))}
        else:
            self.params = {"W_dq": _init(rng, h, s["q_lora_rank"]),
                           "W_uq": _init(rng, s["q_lora_rank"], heads * (dn + dr))}
            self.q_norm = RMSNorm(s["q_lora_rank"], norm_eps)
        self.params.update({"W_dkv": _init(rng, h, r), "W_kr": _init(rng, h, dr), "W_uk": _init(rng, r, heads * dn),
                            "W_uv": _init(rng, r, heads * dv), "W_o": _init(rng, heads * dv, h)})
        self.kv_norm = RMSNorm(r, norm_eps)
        self.rope = RotaryPositionalEncoding(dr, _checks.checked_positive_number("rope_base", rope_base))
        self.scale = 1 / math.sqrt(dn + dr)                                 # the query-key size of the naive heads
        self.rate = _checks.checked_dropout_rate(dropout)
        self.absorb = bool(absorb)
        self.attention_weights = None

    def _queries(self, X):
        """(b, T, h) -> (b, heads, T, qk_nope_head_size + qk_rope_head_size)."""
        p = self.params
        q = X @ p["W_q"] if "W_q" in p else self.q_norm(X @ p["W_dq"]) @ p["W_uq"]  # (b, T, heads * (dn + dr))
        b, T, _ = q.shape
        return q.reshape(b, T, self.sizes["num_heads"], -1).transpose(0, 2, 1, 3)

    def forward(self, X, *, cache=None, training=None):
        s, p = self.sizes, self.params
        _checks.check_sequence_input(X.shape, s["num_hiddens"])
        _checks.check_latent_cache(cache, X.shape[0], s["kv_lora_rank"], s["qk_rope_head_size"])
        (b, T, _), t = X.shape, 0 if cache is None else cache[0].shape[1]   # new and cached positions
        heads, dn, dv = s["num_heads"], s["qk_nope_head_size"], s["v_head_size"]
        q_nope, q_rope = np.split(self._queries(X), [dn], axis=-1)          # (b, heads, T, dn), (b, heads, T, dr)
        q_rope = self.rope(q_rope, offset=t)                                # at positions t .. t + T - 1
        c = self.kv_norm(X @ p["W_dkv"])                                    # (b, T, r): the latent
        k_rope = self.rope(X @ p["W_kr"], offset=t)                         # (b, T, dr): one rotary key for all heads
        if cache is not None:
            c = np.concatenate([cache[0], c], axis=1)                       # (b, t + T, r)
            k_rope = np.concatenate([cache[1], k_rope], axis=1)             # (b, t + T, dr)
        rope_scores = np.einsum("bhtd,bsd->bhts", q_rope, k_rope)           # (b, heads, T, t + T)
        W_uk = p["W_uk"].reshape(-1, heads, dn)                             # (r, heads, dn)
        W_uv = p["W_uv"].reshape(-1, heads, dv)                             # (r, heads, dv)
        if self.absorb:  # q_nope W_uk^T is each head's query in latent space: scores against c itself
            q_latent = np.einsum("bhtn,rhn->bhtr", q_nope, W_uk)            # (b, heads, T, r)
            scores = np.einsum("bhtr,bsr->bhts", q_latent, c)               # (b, heads, T, t + T)
        else:  # decompress every cached latent into each head's keys
            k_nope = np.einsum("bsr,rhn->bhsn", c, W_uk)                    # (b, heads, t + T, dn)
            scores = q_nope @ np.swapaxes(k_nope, 2, 3)                     # (b, heads, T, t + T)
        mask = causal_mask(T, t + T, offset=t)                              # (T, t + T): lower right
        self.attention_weights = masked_softmax((scores + rope_scores) * self.scale, mask=mask)
        weights = self.dropout(self.attention_weights, self.rate, training)
        if self.absorb:  # average the latents, then decompress once per head and query
            latent = np.einsum("bhts,bsr->bhtr", weights, c)               # (b, heads, T, r)
            out = np.einsum("bhtr,rhv->bthv", latent, W_uv)                 # (b, T, heads, dv)
        else:
            v = np.einsum("bsr,rhv->bhsv", c, W_uv)                         # (b, heads, t + T, dv)
            out = (weights @ v).transpose(0, 2, 1, 3)                       # (b, T, heads, dv)
        return out.reshape(b, T, -1) @ p["W_o"], (c, k_rope)                # (b, T, h), the cache
