"""Multi-head latent attention (DeepSeek-V2/V3): a cache of one low-rank latent and one shared
rotary key per token, read either by decompressing keys and values per head (naive) or by
folding the up-projections into the query and the output (absorbed)."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from d2lattn import _checks
from d2lattn.jax.attention import _deterministic, _record
from d2lattn.jax.blocks import RMSNorm
from d2lattn.jax.encoding import RotaryPositionalEncoding
from d2lattn.jax.ops import causal_mask, masked_softmax


class MultiHeadLatentAttention(nnx.Module):
    """Queries through W_q, or W_dq, q_norm and W_uq (q_lora_rank); keys and values from the
    latent c = kv_norm(X W_dkv) through W_uk and W_uv; one rotary key X W_kr shared by every head;
    W_o. Each head's query is its qk_nope_head_size features, then its qk_rope_head_size ones.

    `position` (keyword-only; generate's compiled steps), as CausalSelfAttention's: `cache` is
    then a preallocated (latents (b, L, r), rotary keys (b, L, dr)) buffer written at position."""

    def __init__(self, num_hiddens, num_heads, *, kv_lora_rank, q_lora_rank=None, qk_nope_head_size,
                 qk_rope_head_size, v_head_size, rope_base=10000.0, norm_eps=1e-6, dropout=0.0, absorb=False,
                 rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        s = self.sizes = _checks.checked_latent_sizes(num_hiddens, num_heads, kv_lora_rank, q_lora_rank,
                                                      qk_nope_head_size, qk_rope_head_size, v_head_size)
        h, heads, r, dn, dr, dv = (s[n] for n in ("num_hiddens", "num_heads", "kv_lora_rank", "qk_nope_head_size",
                                                   "qk_rope_head_size", "v_head_size"))
        dense = lambda n_in, n_out: nnx.Linear(n_in, n_out, use_bias=False, rngs=rngs)  # noqa: E731
        if s["q_lora_rank"] is None:
            self.W_q = dense(h, heads * (dn + dr))
        else:
            self.W_dq = dense(h, s["q_lora_rank"])
            self.q_norm = RMSNorm(s["q_lora_rank"], norm_eps)
            self.W_uq = dense(s["q_lora_rank"], heads * (dn + dr))
        self.W_dkv = dense(h, r)
        self.kv_norm = RMSNorm(r, norm_eps)
        self.W_kr = dense(h, dr)
        self.W_uk = dense(r, heads * dn)
        self.W_uv = dense(r, heads * dv)
        self.W_o = dense(heads * dv, h)
        self.rope = RotaryPositionalEncoding(dr, _checks.checked_positive_number("rope_base", rope_base))
        self.scale = 1 / math.sqrt(dn + dr)                                 # the query-key size of the naive heads
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)
        self.absorb = bool(absorb)
        self.last_weights = nnx.Intermediate(None)

    def _queries(self, X):
        """(b, T, h) -> (b, heads, T, qk_nope_head_size + qk_rope_head_size)."""
        q = self.W_q(X) if self.sizes["q_lora_rank"] is None else self.W_uq(self.q_norm(self.W_dq(X)))
        b, T, _ = q.shape                                                   # (b, T, heads * (dn + dr))
        return q.reshape(b, T, self.sizes["num_heads"], -1).transpose(0, 2, 1, 3)

    def __call__(self, X, *, cache=None, training=None, position=None):
        s = self.sizes
        _checks.check_sequence_input(X.shape, s["num_hiddens"])
        _checks.check_latent_cache(cache, X.shape[0], s["kv_lora_rank"], s["qk_rope_head_size"])
        (b, T, _), heads, dn, dv = X.shape, s["num_heads"], s["qk_nope_head_size"], s["v_head_size"]
        start = (0 if cache is None else cache[0].shape[1]) if position is None else position
        q_nope, q_rope = jnp.split(self._queries(X), [dn], axis=-1)         # (b, heads, T, dn), (b, heads, T, dr)
        q_rope = self.rope(q_rope, offset=start)                            # at their absolute positions
        c = self.kv_norm(self.W_dkv(X))                                     # (b, T, r): the latent
        k_rope = self.rope(self.W_kr(X), offset=start)                      # (b, T, dr): one rotary key for all heads
        if position is not None:
            c, k_rope = (jax.lax.dynamic_update_slice_in_dim(buf, x, position, axis=1)
                         for buf, x in zip(cache, (c, k_rope)))             # (b, L, r), (b, L, dr)
        elif cache is not None:
            c, k_rope = (jnp.concatenate([buf, x], axis=1) for buf, x in zip(cache, (c, k_rope)))  # (b, t + T, ..)
        rope_scores = jnp.einsum("bhtd,bsd->bhts", q_rope, k_rope)          # (b, heads, T, t + T)
        W_uk = self.W_uk.kernel[...].reshape(-1, heads, dn)                 # (r, heads, dn)
        W_uv = self.W_uv.kernel[...].reshape(-1, heads, dv)                 # (r, heads, dv)
        if self.absorb:  # q_nope W_uk^T is each head's query in latent space: scores against c itself
            q_latent = jnp.einsum("bhtn,rhn->bhtr", q_nope, W_uk)           # (b, heads, T, r)
            scores = jnp.einsum("bhtr,bsr->bhts", q_latent, c)              # (b, heads, T, t + T)
        else:  # decompress every cached latent into each head's keys
            k_nope = jnp.einsum("bsr,rhn->bhsn", c, W_uk)                   # (b, heads, t + T, dn)
            scores = q_nope @ jnp.swapaxes(k_nope, 2, 3)                    # (b, heads, T, t + T)
        mask = causal_mask(T, c.shape[1], offset=start)                     # (T, t + T): lower right
        weights = masked_softmax((scores + rope_scores) * self.scale, mask=mask)
        _record(self.last_weights, weights)
        weights = self.dropout(weights, deterministic=_deterministic(training))
        if self.absorb:  # average the latents, then decompress once per head and query
            latent = jnp.einsum("bhts,bsr->bhtr", weights, c)              # (b, heads, T, r)
            out = jnp.einsum("bhtr,rhv->bthv", latent, W_uv)                # (b, T, heads, dv)
        else:
            v = jnp.einsum("bsr,rhv->bhsv", c, W_uv)                        # (b, heads, t + T, dv)
            out = (weights @ v).transpose(0, 2, 1, 3)                       # (b, T, heads, dv)
        return self.W_o(out.reshape(b, T, -1)), (c, k_rope)                 # (b, T, h), the cache

    @property
    def attention_weights(self):
        return self.last_weights.get_value()                                # (b, heads, T, t + T)
