"""Multi-head latent attention (DeepSeek-V2/V3): a cache of one low-rank latent and one shared
rotary key per token, read either by decompressing keys and values per head (naive) or by
folding the up-projections into the query and the output (absorbed)."""

import math

import keras
import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.attention import _dense_layer
from d2lattn.tensorflow.blocks import RMSNorm
from d2lattn.tensorflow.encoding import RotaryPositionalEncoding
from d2lattn.tensorflow.ops import _Layer, _RecordedWeights, causal_mask, masked_softmax


class MultiHeadLatentAttention(_Layer):
    """Queries through W_q, or W_dq, q_norm and W_uq (q_lora_rank); keys and values from the
    latent c = kv_norm(X W_dkv) through W_uk and W_uv; one rotary key X W_kr shared by every head;
    W_o. Each head's query is its qk_nope_head_size features, then its qk_rope_head_size ones.

    `position` (this backend's keyword, for `generate` under tf.function), as CausalSelfAttention's:
    `cache` is then a pair of buffers (latents (b, L, r), rotary keys (b, L, dr)) written at position."""

    attention_weights = _RecordedWeights()

    def __init__(self, num_hiddens, num_heads, *, kv_lora_rank, q_lora_rank=None, qk_nope_head_size,
                 qk_rope_head_size, v_head_size, rope_base=10000.0, norm_eps=1e-6, dropout=0.0, absorb=False):
        super().__init__()
        s = self.sizes = _checks.checked_latent_sizes(num_hiddens, num_heads, kv_lora_rank, q_lora_rank,
                                                      qk_nope_head_size, qk_rope_head_size, v_head_size)
        h, heads, r, dn, dr, dv = (s[n] for n in ("num_hiddens", "num_heads", "kv_lora_rank", "qk_nope_head_size",
                                                   "qk_rope_head_size", "v_head_size"))
        if s["q_lora_rank"] is None:
            self.W_q = _dense_layer(h, heads * (dn + dr))
        else:
            self.W_dq = _dense_layer(h, s["q_lora_rank"])
            self.q_norm = RMSNorm(s["q_lora_rank"], norm_eps)
            self.W_uq = _dense_layer(s["q_lora_rank"], heads * (dn + dr))
        self.W_dkv = _dense_layer(h, r)
        self.kv_norm = RMSNorm(r, norm_eps)
        self.W_kr = _dense_layer(h, dr)
        self.W_uk = _dense_layer(r, heads * dn)
        self.W_uv = _dense_layer(r, heads * dv)
        self.W_o = _dense_layer(heads * dv, h)
        self.rope = RotaryPositionalEncoding(dr, _checks.checked_positive_number("rope_base", rope_base))
        self.scale = 1 / math.sqrt(dn + dr)                                 # the query-key size of the naive heads
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.absorb = bool(absorb)
        self.attention_weights = None
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def _queries(self, X):
        """(b, T, h) -> (b, heads, T, qk_nope_head_size + qk_rope_head_size)."""
        q = self.W_q(X) if self.sizes["q_lora_rank"] is None else self.W_uq(self.q_norm(self.W_dq(X)))
        b, T = tf.shape(q)[0], tf.shape(q)[1]                               # (b, T, heads * (dn + dr))
        return tf.transpose(tf.reshape(q, (b, T, self.sizes["num_heads"], -1)), (0, 2, 1, 3))

    def call(self, X, *, cache=None, position=None, training=None):
        s = self.sizes
        _checks.check_sequence_input(X.shape, s["num_hiddens"])
        _checks.check_latent_cache(cache, X.shape[0], s["kv_lora_rank"], s["qk_rope_head_size"])
        heads, dn, dv = s["num_heads"], s["qk_nope_head_size"], s["v_head_size"]
        start = position if position is not None else 0 if cache is None else tf.shape(cache[0])[1]
        q_nope, q_rope = tf.split(self._queries(X), [dn, s["qk_rope_head_size"]], -1)  # (b, heads, T, dn), (.., dr)
        q_rope = self.rope(q_rope, offset=start)                            # at positions start .. start + T - 1
        c = self.kv_norm(self.W_dkv(X))                                     # (b, T, r): the latent
        k_rope = self.rope(self.W_kr(X), offset=start)                      # (b, T, dr): one rotary key for all heads
        if position is not None:
            c, k_rope = (keras.ops.slice_update(buffer, (0, position, 0), new)  # (b, L, r), (b, L, dr)
                         for buffer, new in zip(cache, (c, k_rope)))
        elif cache is not None:
            c, k_rope = tf.concat([cache[0], c], 1), tf.concat([cache[1], k_rope], 1)  # (b, t + T, r), (.., dr)
        rope_scores = tf.einsum("bhtd,bsd->bhts", q_rope, k_rope)           # (b, heads, T, t + T)
        W_uk = tf.reshape(self.W_uk.kernel, (-1, heads, dn))                # (r, heads, dn)
        W_uv = tf.reshape(self.W_uv.kernel, (-1, heads, dv))                # (r, heads, dv)
        if self.absorb:  # q_nope W_uk^T is each head's query in latent space: scores against c itself
            q_latent = tf.einsum("bhtn,rhn->bhtr", q_nope, W_uk)            # (b, heads, T, r)
            scores = tf.einsum("bhtr,bsr->bhts", q_latent, c)               # (b, heads, T, t + T)
        else:  # decompress every cached latent into each head's keys
            k_nope = tf.einsum("bsr,rhn->bhsn", c, W_uk)                    # (b, heads, t + T, dn)
            scores = tf.matmul(q_nope, k_nope, transpose_b=True)            # (b, heads, T, t + T)
        mask = causal_mask(tf.shape(X)[1], tf.shape(c)[1], offset=start)    # (T, t + T): lower right
        self.attention_weights = masked_softmax((scores + rope_scores) * self.scale, mask=mask)
        weights = self.dropout(self.attention_weights, training=training)
        if self.absorb:  # average the latents, then decompress once per head and query
            latent = tf.einsum("bhts,bsr->bhtr", weights, c)               # (b, heads, T, r)
            out = tf.einsum("bhtr,rhv->bthv", latent, W_uv)                 # (b, T, heads, dv)
        else:
            v = tf.einsum("bsr,rhv->bhsv", c, W_uv)                         # (b, heads, t + T, dv)
            out = tf.transpose(tf.matmul(weights, v), (0, 2, 1, 3))         # (b, T, heads, dv)
        out = tf.reshape(out, (tf.shape(X)[0], tf.shape(X)[1], heads * dv))  # (b, T, heads * dv)
        return self.W_o(out), (c, k_rope)                                   # (b, T, h), the cache
