"""Multi-head latent attention (DeepSeek-V2/V3): a cache of one low-rank latent and one shared
rotary key per token, read either by decompressing keys and values per head (naive) or by
folding the up-projections into the query and the output (absorbed).

As CausalSelfAttention here, what needs shapes is made from concrete arrays before the graph:
the lower-right causal mask, the rotary positions, and an empty cache ((b, 0, r), (b, 0, dr))
at the start, so the graph always concatenates.
"""

import math

import mxnet as mx
from mxnet import init, np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.attention import DENSE_INIT
from d2lattn.mxnet.blocks import RMSNorm
from d2lattn.mxnet.encoding import RotaryPositionalEncoding
from d2lattn.mxnet.ops import _graph_keep, _lower_masked, _traced, _train_mode, causal_mask


def _dense(n_in, n_out):
    """A dense map without bias, initialized (the norms and the rotary block initialize themselves)."""
    layer = nn.Dense(n_out, use_bias=False, flatten=False, in_units=n_in)
    layer.initialize(DENSE_INIT)
    return layer


def _shared(F, X, Y, heads, transpose_b=False):
    """Every head of X (b, heads, T, m) times the one Y (b, n, m) or (b, m, n) all heads share
    -> (b, heads, T, n): one batch_dot over heads * T rows (MXNet 1.9's einsum is slow at long
    contexts, and the gradient of its broadcasting matmul is wrong)."""
    out = F.npx.batch_dot(F.npx.reshape(X, (-2, -5, -2)), Y, transpose_b=transpose_b)   # (b, heads * T, n)
    return F.npx.reshape(out, (-2, -6, heads, -1, -2))


def _per_head(F, X, W, heads, size, transpose=False):
    """X (b, heads, T, m) times each head's block of W: W (r, heads * size), head i's columns
    i*size:(i+1)*size; X @ block^T (m = size, -> r) with `transpose`, else X @ block (m = r, -> size)."""
    W = F.np.transpose(F.npx.reshape(W, (-2, heads, size)), (1, 0, 2))   # (heads, r, size)
    X = F.np.transpose(X, (1, 0, 2, 3))                                   # (heads, b, T, m)
    out = F.npx.batch_dot(F.npx.reshape(X, (-2, -5, -2)), W, transpose_b=transpose)  # (heads, b * T, ..)
    return F.np.transpose(F.npx.reshape_like(out, X, lhs_begin=1, lhs_end=2, rhs_begin=1, rhs_end=3), (1, 0, 2, 3))


class MultiHeadLatentAttention(nn.HybridBlock):
    """Queries through W_q, or W_dq, q_norm and W_uq (q_lora_rank); keys and values from the
    latent c = kv_norm(X W_dkv) through W_uk and W_uv; one rotary key X W_kr shared by every head;
    W_o. Each head's query is its qk_nope_head_size features, then its qk_rope_head_size ones.
    W_uk and W_uv are the block's own (in, out) parameters, not Dense blocks: the absorbed
    computation multiplies by them from the other side."""

    def __init__(self, num_hiddens, num_heads, *, kv_lora_rank, q_lora_rank=None, qk_nope_head_size,
                 qk_rope_head_size, v_head_size, rope_base=10000.0, norm_eps=1e-6, dropout=0.0, absorb=False):
        super().__init__()
        s = self.sizes = _checks.checked_latent_sizes(num_hiddens, num_heads, kv_lora_rank, q_lora_rank,
                                                      qk_nope_head_size, qk_rope_head_size, v_head_size)
        h, heads, r, dn, dr, dv = (s[n] for n in ("num_hiddens", "num_heads", "kv_lora_rank", "qk_nope_head_size",
                                                   "qk_rope_head_size", "v_head_size"))
        if s["q_lora_rank"] is None:
            self.W_q = _dense(h, heads * (dn + dr))
        else:
            self.W_dq = _dense(h, s["q_lora_rank"])
            self.q_norm = RMSNorm(s["q_lora_rank"], norm_eps)
            self.W_uq = _dense(s["q_lora_rank"], heads * (dn + dr))
        self.W_dkv = _dense(h, r)
        self.kv_norm = RMSNorm(r, norm_eps)
        self.W_kr = _dense(h, dr)
        self.W_uk = self.params.get("W_uk", shape=(r, heads * dn), init=init.Uniform(1 / math.sqrt(r)))
        self.W_uv = self.params.get("W_uv", shape=(r, heads * dv), init=init.Uniform(1 / math.sqrt(r)))
        self.W_uk.initialize(), self.W_uv.initialize()
        self.W_o = _dense(heads * dv, h)
        self.rope = RotaryPositionalEncoding(dr, _checks.checked_positive_number("rope_base", rope_base))
        self.scale = 1 / math.sqrt(dn + dr)                                 # the query-key size of the naive heads
        self.rate = _checks.checked_dropout_rate(dropout)
        self.absorb = bool(absorb)

    def cache_inputs(self, batch, cache, ctx):
        """The cache checked, as (latents, rotary keys); empty ones (b, 0, r), (b, 0, dr) at the start."""
        s = self.sizes
        _checks.check_latent_cache(cache, batch, s["kv_lora_rank"], s["qk_rope_head_size"])
        return tuple(cache or (np.zeros((batch, 0, s[n]), ctx=ctx) for n in ("kv_lora_rank", "qk_rope_head_size")))

    def positions(self, T, t, ctx):
        """(keep (T, t + T), (rotary positions,)) for T new positions after t cached ones."""
        return causal_mask(T, t + T, offset=t).as_in_ctx(ctx), (self.rope.positions(t, T, ctx),)

    def graph_positions(self, X):
        """As `positions`, traced inside a parent's graph for a call without a cache."""
        return _graph_keep(X, causal=True), (mx.sym.npx.arange_like(X, axis=1),)

    def __call__(self, X, *, cache=None, training=None):
        if _traced(self, X, cache=cache):
            latents = rotary_keys = None                                    # nothing cached
            keep, rotary = self.graph_positions(X)
        else:
            _checks.check_sequence_input(X.shape, self.sizes["num_hiddens"])
            latents, rotary_keys = self.cache_inputs(X.shape[0], cache, X.ctx)
            keep, rotary = self.positions(X.shape[1], latents.shape[1], X.ctx)
        with _train_mode(training):
            return self.with_keep(X, latents, rotary_keys, keep, *rotary)

    def with_keep(self, X, latents, rotary_keys, keep, positions):
        """The graph on ready inputs, as a parent's graph calls it: -> (Y, (latents, rotary keys))."""
        Y, latents, rotary_keys, weights, live = nn.HybridBlock.__call__(
            self, X, latents, rotary_keys, keep, positions)
        self.save_weights(weights, live)
        return Y, (latents, rotary_keys)

    def _queries(self, F, X):
        """(b, T, h) -> (b, heads, T, qk_nope_head_size + qk_rope_head_size)."""
        q = self.W_q(X) if self.sizes["q_lora_rank"] is None else self.W_uq(self.q_norm(self.W_dq(X)))
        q = F.npx.reshape(q, (-2, -2, self.sizes["num_heads"], -1))         # (b, T, heads, dn + dr)
        return F.np.transpose(q, (0, 2, 1, 3))

    def _split_heads(self, F, X):
        """(b, n, heads * d) -> (b, heads, n, d)."""
        return F.np.transpose(F.npx.reshape(X, (-2, -2, self.sizes["num_heads"], -1)), (0, 2, 1, 3))

    def hybrid_forward(self, F, X, latents, rotary_keys, keep, positions, W_uk, W_uv):
        s = self.sizes
        heads, dn, dv = s["num_heads"], s["qk_nope_head_size"], s["v_head_size"]
        q_nope, q_rope = F.np.split(self._queries(F, X), [dn], axis=-1)     # (b, heads, T, dn), (b, heads, T, dr)
        q_rope = self.rope(q_rope, offset=(positions,))                     # at their positions
        c = self.kv_norm(self.W_dkv(X))                                     # (b, T, r): the latent
        k_rope = self.rope(self.W_kr(X), offset=(positions,))               # (b, T, dr): one rotary key for all heads
        if latents is not None:                                             # None: traced without a cache
            c = F.np.concatenate([latents, c], axis=1)                      # (b, t + T, r)
            k_rope = F.np.concatenate([rotary_keys, k_rope], axis=1)        # (b, t + T, dr)
        rope_scores = _shared(F, q_rope, k_rope, heads, transpose_b=True)   # (b, heads, T, t + T)
        if self.absorb:  # q_nope W_uk^T is each head's query in latent space: scores against c itself
            q_latent = _per_head(F, q_nope, W_uk, heads, dn, transpose=True)  # (b, heads, T, r)
            scores = _shared(F, q_latent, c, heads, transpose_b=True)       # (b, heads, T, t + T)
        else:  # decompress every cached latent into each head's keys
            k_nope = self._split_heads(F, F.np.dot(c, W_uk))                # (b, heads, t + T, dn)
            scores = F.npx.batch_dot(q_nope, k_nope, transpose_b=True)      # (b, heads, T, t + T)
        scores, on = _lower_masked((scores + rope_scores) * self.scale, keep)
        weights = F.npx.softmax(scores, axis=-1)                            # (b, heads, T, t + T)
        live = F.np.max(on, axis=-1, keepdims=True)                         # a row with no key: zeros
        dropped = (F.npx.dropout(weights, p=self.rate) if self.rate else weights) * live  # only in training
        if self.absorb:  # average the latents, then decompress once per head and query
            latent = _shared(F, dropped, c, heads)                          # (b, heads, T, r)
            out = _per_head(F, latent, W_uv, heads, dv)                     # (b, heads, T, dv)
        else:
            v = self._split_heads(F, F.np.dot(c, W_uv))                     # (b, heads, t + T, dv)
            out = F.npx.batch_dot(dropped, v)                               # (b, heads, T, dv)
        out = F.npx.reshape(F.np.transpose(out, (0, 2, 1, 3)), (-2, -2, -5))  # (b, T, heads * dv)
        return self.W_o(out), c, k_rope, weights, live

    def save_weights(self, weights, live):
        self._saved = (weights, live)

    @property
    def attention_weights(self):
        """(b, heads, T, t + T) of the last call; None after one traced inside a parent's graph."""
        saved = getattr(self, "_saved", None)
        return None if saved is None or isinstance(saved[0], mx.sym.Symbol) else saved[0] * saved[1]
