"""Attention with a state of constant size: linear attention and the gated delta rule, each in its
equivalent forms, and GatedDeltaNet, the layer built around the delta rule.

A state S (..., d_k, d_v) holds what the keys wrote, one (d_k, d_v) matrix per head; a query reads it
as q^T S. The chunked forms pad the sequence to whole chunks with positions that write nothing. The
loops over positions and chunks are lax.scan: one traced step, compiled once. The functions that
hold them are jitted (inlined under an outer jit): an eager lax.scan traces and compiles its step
again at every call, since each call makes a new step function.
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from d2lattn import _checks


def _feature_map(x, name):
    """phi(x) > 0 for elu1 (elu(x) + 1, Katharopoulos et al.), >= 0 for relu."""
    return jax.nn.elu(x) + 1 if name == "elu1" else jax.nn.relu(x)


def _l2_normalized(x):
    """x / |x| over the features, with the 1e-6 under the root that Qwen3-Next and FLA use."""
    return x * lax.rsqrt((x * x).sum(-1, keepdims=True) + 1e-6)


def _chunks(x, size):
    """(..., T, f) zero-padded to whole chunks and split: (..., n, size, f)."""
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, -x.shape[-2] % size), (0, 0)])
    return x.reshape(*x.shape[:-2], x.shape[-2] // size, size, x.shape[-1])


def _unchunked(x, T):
    """(..., n, size, f) -> (..., T, f), the padding dropped."""
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :T, :]


def _read(numerator, denominator):
    """numerator / denominator; 0 for a query that reads nothing (denominator 0, relu only)."""
    return numerator / jnp.where(denominator > 0, denominator, 1.0)


# --- linear attention -------------------------------------------------------------------


def _linear_block(q, k, v, S, z):
    """Causal linear attention on one block of featurised positions after the state (S, z):
    o_i = (q_i^T S + sum_{j<=i} (q_i.k_j) v_j) / (q_i^T z + sum_{j<=i} q_i.k_j)."""
    scores = jnp.tril(q @ k.mT)                       # (..., c, c), j <= i kept
    numerator = q @ S + scores @ v                                     # (..., c, dv)
    denominator = (q @ z[..., None])[..., 0] + scores.sum(-1)          # (..., c)
    S = S + k.mT @ v                                    # (..., dk, dv)
    return _read(numerator, denominator[..., None]), S, z + k.sum(-2)


def _linear_parallel(q, k, v, S, z):
    """The masked quadratic form: every position at once, O(T^2) time."""
    return _linear_block(q, k, v, S, z)


@jax.jit
def _linear_recurrent(q, k, v, S, z):
    """The RNN: S += k_t v_t^T, z += k_t, o_t = q_t^T S / q_t^T z, one position at a time."""

    def step(carry, x):
        (S, z), (q_t, k_t, v_t) = carry, x                             # (..., dk) and (..., dv) each
        S = S + k_t[..., :, None] * v_t[..., None, :]                  # (..., dk, dv)
        z = z + k_t                                                    # (..., dk)
        numerator = (q_t[..., :, None] * S).sum(-2)                    # (..., dv)
        return (S, z), _read(numerator, (q_t * z).sum(-1, keepdims=True))

    (S, z), outs = lax.scan(step, (S, z), [jnp.moveaxis(x, -2, 0) for x in (q, k, v)])  # outs (T, ..., dv)
    return jnp.moveaxis(outs, 0, -2), S, z                             # (..., T, dv)


@functools.partial(jax.jit, static_argnums=5)
def _linear_chunked(q, k, v, S, z, chunk_size):
    """Parallel within chunks of `chunk_size`, recurrent across them: O(T c) time."""
    T = q.shape[-2]
    q, k, v = (_chunks(x, chunk_size) for x in (q, k, v))              # (..., n, c, f): featurised, so padding writes 0

    def step(carry, x):
        out, S, z = _linear_block(*x, *carry)                          # out (..., c, dv)
        return (S, z), out

    (S, z), outs = lax.scan(step, (S, z), [jnp.moveaxis(x, -3, 0) for x in (q, k, v)])  # outs (n, ..., c, dv)
    return _unchunked(jnp.moveaxis(outs, 0, -3), T), S, z


def linear_attention(queries, keys, values, *, causal=True, feature_map="elu1", chunk_size=64, state=None,
                     return_state=False, form="chunked"):
    _checks.check_linear_inputs(queries.shape, keys.shape, values.shape, causal)
    _checks.checked_choice("feature_map", feature_map, _checks.FEATURE_MAPS)
    _checks.checked_choice("form", form, _checks.LINEAR_FORMS)
    chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
    lead, dk, dv = queries.shape[:-2], queries.shape[-1], values.shape[-1]
    if state is None:
        state = (jnp.zeros((*lead, dk, dv), queries.dtype), jnp.zeros((*lead, dk), queries.dtype))
    _checks.check_state("state", state, ((*lead, dk, dv), (*lead, dk)), "a tuple (S, z)")
    S, z = state
    q, k = _feature_map(queries, feature_map), _feature_map(keys, feature_map)  # (..., q, dk), (..., k, dk)
    if not causal:                                                     # every query reads every key
        S, z = S + k.mT @ values, z + k.sum(-2)         # (..., dk, dv), (..., dk)
        out = _read(q @ S, q @ z[..., None])                           # (..., q, dv)
    elif form == "parallel":
        out, S, z = _linear_parallel(q, k, values, S, z)
    elif form == "recurrent":
        out, S, z = _linear_recurrent(q, k, values, S, z)
    else:
        out, S, z = _linear_chunked(q, k, values, S, z, chunk_size)
    return (out, (S, z)) if return_state else out                      # (..., q, dv)


# --- the gated delta rule ---------------------------------------------------------------


def _delta_recurrent(q, k, v, log_alpha, beta, S):
    """S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T q_t, one position
    at a time: decay, predict v from k, write beta times the error."""

    def step(S, x):
        q_t, k_t, v_t, log_alpha_t, beta_t = x                         # (..., dk|dv) and (...,)
        S = jnp.exp(log_alpha_t[..., None, None]) * S                  # (..., dk, dv)
        error = v_t - (k_t[..., :, None] * S).sum(-2)                  # (..., dv): v_t - S^T k_t
        S = S + k_t[..., :, None] * (beta_t[..., None] * error)[..., None, :]
        return S, (q_t[..., :, None] * S).sum(-2)                      # (..., dv)

    xs = [jnp.moveaxis(x, -2, 0) for x in (q, k, v)] + [jnp.moveaxis(x, -1, 0) for x in (log_alpha, beta)]
    S, outs = lax.scan(step, S, xs)                                    # outs (T, ..., dv)
    return jnp.moveaxis(outs, 0, -2), S                                # (..., T, dv)


def _unit_lower_solve(A, B):
    """X with (I + tril(A, -1)) X = B: forward substitution, batched over the leading axes."""
    # row by row in a lax.fori_loop: XLA's batched solve_triangular on CPU is ~50x slower at chunks of 64
    L = jnp.tril(A, -1)                                                # (..., c, c)

    def row(i, X):
        L_i = lax.dynamic_index_in_dim(L, i, -2, keepdims=True)        # (..., 1, c): zero from column i on
        B_i = lax.dynamic_index_in_dim(B, i, -2, keepdims=True)        # (..., 1, f)
        return lax.dynamic_update_index_in_dim(X, B_i - L_i @ X, i, -2)

    return lax.fori_loop(0, A.shape[-1], row, jnp.zeros_like(B))


def _delta_chunked(q, k, v, log_alpha, beta, S, chunk_size):
    """The WY/UT form (Yang et al.): within a chunk, the delta updates are one lower-triangular solve
    (the UT transform) for the new values u = beta (v - S^T k) all positions would write; across chunks,
    the state. The cumulative log decay G_i gives the decay between positions j <= i as exp(G_i - G_j)."""
    T = q.shape[-2]
    q, k, v = (_chunks(x, chunk_size) for x in (q, k, v))              # (..., n, c, f)
    G = jnp.cumsum(_chunks(log_alpha[..., None], chunk_size)[..., 0], -1)  # (..., n, c): padding decays by 1
    beta = _chunks(beta[..., None], chunk_size)                        # (..., n, c, 1): padding writes 0
    decay = jnp.tril(jnp.exp(jnp.tril(G[..., :, None] - G[..., None, :])))  # (..., n, c, c), j <= i
    system = (beta * k) @ k.mT * decay                  # (..., n, c, c)
    u = _unit_lower_solve(system, beta * v)                            # (..., n, c, dv): values to write
    w = _unit_lower_solve(system, beta * k * jnp.exp(G)[..., None])  # (..., n, c, dk): keys reading S
    attn = q @ k.mT * decay                             # (..., n, c, c), j <= i
    q_decayed = q * jnp.exp(G)[..., None]                            # (..., n, c, dk)
    k_decayed = k * jnp.exp(G[..., -1:] - G)[..., None]              # (..., n, c, dk): to the chunk's end

    def step(S, x):
        u_i, w_i, q_i, attn_i, k_i, G_i = x                            # one chunk each
        new = u_i - w_i @ S                                            # (..., c, dv): the errors written
        out = q_i @ S + attn_i @ new                                   # (..., c, dv)
        return jnp.exp(G_i[..., -1])[..., None, None] * S + k_i.mT @ new, out

    xs = [jnp.moveaxis(x, -3, 0) for x in (u, w, q_decayed, attn, k_decayed)] + [jnp.moveaxis(G, -2, 0)]
    S, outs = lax.scan(step, S, xs)                                    # outs (n, ..., c, dv)
    return _unchunked(jnp.moveaxis(outs, 0, -3), T), S


def gated_delta_rule(queries, keys, values, alpha, beta, *, chunk_size=64, state=None, return_state=False,
                     form="chunked"):
    _checks.check_linear_inputs(queries.shape, keys.shape, values.shape, True)
    _checks.check_gates(queries.shape, alpha.shape, beta.shape)
    if not isinstance(alpha, jax.core.Tracer):                         # values are unknown while tracing
        _checks.check_decay_values(jax.device_get(alpha))
    _checks.checked_choice("form", form, _checks.DELTA_FORMS)
    chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
    lead, dk, dv = queries.shape[:-2], queries.shape[-1], values.shape[-1]
    S = jnp.zeros((*lead, dk, dv), queries.dtype) if state is None else state
    _checks.check_state("state", S, ((*lead, dk, dv),), "an array S")
    out, S = _delta(queries, keys, values, jnp.log(alpha), beta, S, form, chunk_size)
    return (out, S) if return_state else out                           # (..., T, dv)


@functools.partial(jax.jit, static_argnums=(6, 7))
def _delta(queries, keys, values, log_alpha, beta, S, form, chunk_size):
    """The delta rule in `form` on L2-normalised keys and queries, the queries scaled by 1/sqrt(d_k)."""
    q = _l2_normalized(queries) / math.sqrt(queries.shape[-1])         # (..., T, dk)
    k = _l2_normalized(keys)                                           # (..., T, dk)
    if form == "recurrent":
        return _delta_recurrent(q, k, values, log_alpha, beta, S)
    return _delta_chunked(q, k, values, log_alpha, beta, S, chunk_size)


# --- the layer ------------------------------------------------------------------------


def _silu(x):
    return jax.nn.silu(x)


class GatedDeltaNet(nnx.Module):
    """Qwen3-Next's linear-attention layer with one key head per value head: dense maps to queries,
    keys and values, a short causal depthwise convolution over them (then SiLU), per-head gates
    beta = sigmoid(x W_b) and alpha = exp(-exp(A_log) softplus(x W_a + dt_bias)), the gated delta rule,
    an RMSNorm of each head's output gated by SiLU(x W_z), and W_o. Its cache is (conv, S): the last
    conv_size - 1 inputs of the convolution (b, conv_size - 1, channels) and the state (b, heads, dk, dv)."""

    def __init__(self, num_hiddens, num_heads, *, head_size=None, value_head_size=None, conv_size=4,
                 norm_eps=1e-6, chunk_size=64, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        H = self.num_heads = _checks.checked_positive_int("num_heads", num_heads)
        if head_size is None:
            _checks.check_divisible(h, H)
        dk = self.head_size = h // H if head_size is None else _checks.checked_positive_int("head_size", head_size)
        dv = self.value_head_size = dk if value_head_size is None else _checks.checked_positive_int(
            "value_head_size", value_head_size)
        K = self.conv_size = _checks.checked_positive_int("conv_size", conv_size)
        self.eps = _checks.checked_positive_number("norm_eps", norm_eps)
        self.chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
        dense = lambda n_in, n_out: nnx.Linear(n_in, n_out, use_bias=False, rngs=rngs)  # noqa: E731
        self.W_q, self.W_k, self.W_v, self.W_z = dense(h, H * dk), dense(h, H * dk), dense(h, H * dv), dense(h, H * dv)
        self.W_b, self.W_a = dense(h, H), dense(h, H)
        bound = 1 / math.sqrt(K)
        self.conv = nnx.Param(jax.random.uniform(rngs.params(), (K, 2 * H * dk + H * dv), minval=-bound, maxval=bound))
        self.dt_bias = nnx.Param(jnp.ones(H))
        self.A_log = nnx.Param(jnp.log(jnp.linspace(1.0, 16.0, H)))
        self.gamma = nnx.Param(jnp.ones(dv))
        self.W_o = dense(H * dv, h)

    def empty_cache(self, X):
        """The cache before the first position of X (b, T, num_hiddens): zeros (conv, S)."""
        H, dk, dv, K = self.num_heads, self.head_size, self.value_head_size, self.conv_size
        b, channels = X.shape[0], 2 * H * dk + H * dv
        return (jnp.zeros((b, K - 1, channels), X.dtype), jnp.zeros((b, H, dk, dv), X.dtype))

    def _heads(self, X, size):
        """(b, T, heads * size) -> (b, heads, T, size)."""
        return jnp.swapaxes(X.reshape(*X.shape[:2], self.num_heads, size), 1, 2)

    def __call__(self, X, *, cache=None, training=None, position=None):  # no positions: `position` is ignored
        H, dk, dv, K = self.num_heads, self.head_size, self.value_head_size, self.conv_size
        _checks.check_sequence_input(X.shape, self.W_q.in_features)
        b, T = X.shape[:2]
        channels = 2 * H * dk + H * dv
        cache = self.empty_cache(X) if cache is None else cache
        _checks.check_state("cache", cache, ((b, K - 1, channels), (b, H, dk, dv)), "a tuple (conv, S)")
        new = jnp.concatenate([self.W_q(X), self.W_k(X), self.W_v(X)], -1)      # (b, T, channels): q, k, v
        mixed = jnp.concatenate([cache[0], new], 1)                             # (b, K - 1 + T, channels)
        conv = sum(self.conv[i] * mixed[:, i:i + T] for i in range(K))   # (b, T, channels): causal, depthwise
        q, k, v = jnp.split(_silu(conv), [H * dk, 2 * H * dk], -1)
        beta = jax.nn.sigmoid(self.W_b(X))                               # (b, T, heads)
        log_alpha = -jnp.exp(self.A_log[...]) * jax.nn.softplus(self.W_a(X) + self.dt_bias)  # (b, T, heads): <= 0
        out, S = _delta(self._heads(q, dk), self._heads(k, dk), self._heads(v, dv), jnp.swapaxes(log_alpha, 1, 2),
                        jnp.swapaxes(beta, 1, 2), cache[1], "chunked", self.chunk_size)  # (b, heads, T, dv)
        out = out * lax.rsqrt((out ** 2).mean(-1, keepdims=True) + self.eps) * self.gamma  # RMSNorm per head
        out = jnp.swapaxes(out, 1, 2) * _silu(self.W_z(X)).reshape(b, T, H, dv)  # (b, T, heads, dv), gated
        return self.W_o(out.reshape(b, T, H * dv)), (mixed[:, mixed.shape[1] - (K - 1):], S)
