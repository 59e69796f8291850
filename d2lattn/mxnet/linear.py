"""Attention with a state of constant size: linear attention and the gated delta rule, each in its
equivalent forms, and GatedDeltaNet, the layer built around the delta rule.

A state S (..., d_k, d_v) holds what the keys wrote, one (d_k, d_v) matrix per head; a query reads it
as q^T S. The chunked forms pad the sequence to whole chunks with positions that write nothing.

The loops over positions and chunks need the sequence's length, which a hybridized graph symbol does
not have: the functions run imperatively (tests say so: _backend.LACKS). GatedDeltaNet is a HybridBlock
all the same, so that a hybridized TransformerLM holds it in its one graph: run imperatively it loops over
chunks; traced, its whole sequence is one chunk of the same WY form (`_delta_whole`), and its cache (conv, S)
is an input and an output of the graph, as a softmax layer's keys and values are.
"""

import math

import mxnet as mx
import numpy as onp
from mxnet import init, np, npx
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.ops import _F, _traced


def _feature_map(x, name):
    """phi(x) > 0 for elu1 (elu(x) + 1, Katharopoulos et al.), >= 0 for relu."""
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))) if name == "elu1" else npx.relu(x)


def _l2_normalized(x):
    """x / |x| over the features, with the 1e-6 under the root that Qwen3-Next and FLA use."""
    return x / _F(x).np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)


def _chunks(x, size):
    """(..., T, f) zero-padded to whole chunks and split: (..., n, size, f)."""
    pad = -x.shape[-2] % size
    if pad:                                                            # (MXNet's pad refuses a width of 0)
        x = np.concatenate([x, np.zeros((*x.shape[:-2], pad, x.shape[-1]), ctx=x.ctx)], -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] // size, size, x.shape[-1])


def _unchunked(x, T):
    """(..., n, size, f) -> (..., T, f), the padding dropped."""
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :T, :]


def _read(numerator, denominator):
    """numerator / denominator; 0 for a query that reads nothing (denominator 0, relu only)."""
    # ones_like, not 1.0: MXNet 1.9's np.where(c, x, scalar) sends x's gradient where c is False
    return numerator / np.where(denominator > 0, denominator, np.ones_like(denominator))


# --- linear attention -------------------------------------------------------------------


def _linear_block(q, k, v, S, z):
    """Causal linear attention on one block of featurised positions after the state (S, z):
    o_i = (q_i^T S + sum_{j<=i} (q_i.k_j) v_j) / (q_i^T z + sum_{j<=i} q_i.k_j)."""
    scores = np.tril(q @ k.swapaxes(-1, -2))                       # (..., c, c), j <= i kept
    numerator = q @ S + scores @ v                                     # (..., c, dv)
    denominator = (q @ z[..., None])[..., 0] + scores.sum(-1)          # (..., c)
    S = S + k.swapaxes(-1, -2) @ v                                    # (..., dk, dv)
    return _read(numerator, denominator[..., None]), S, z + k.sum(-2)


def _linear_parallel(q, k, v, S, z):
    """The masked quadratic form: every position at once, O(T^2) time."""
    return _linear_block(q, k, v, S, z)


def _linear_recurrent(q, k, v, S, z):
    """The RNN: S += k_t v_t^T, z += k_t, o_t = q_t^T S / q_t^T z, one position at a time."""
    outs = []
    for t in range(q.shape[-2]):
        S = S + k[..., t, :, None] * v[..., t, None, :]                # (..., dk, dv)
        z = z + k[..., t, :]                                           # (..., dk)
        numerator = (q[..., t, :, None] * S).sum(-2)                   # (..., dv)
        outs.append(_read(numerator, (q[..., t, :] * z).sum(-1, keepdims=True)))
    return np.stack(outs, -2), S, z                                 # (..., T, dv)


def _linear_chunked(q, k, v, S, z, chunk_size):
    """Parallel within chunks of `chunk_size`, recurrent across them: O(T c) time."""
    T = q.shape[-2]
    q, k, v = (_chunks(x, chunk_size) for x in (q, k, v))              # (..., n, c, f): featurised, so padding writes 0
    outs = []
    for i in range(q.shape[-3]):
        out, S, z = _linear_block(q[..., i, :, :], k[..., i, :, :], v[..., i, :, :], S, z)
        outs.append(out)                                               # (..., c, dv)
    return _unchunked(np.stack(outs, -3), T), S, z


def linear_attention(queries, keys, values, *, causal=True, feature_map="elu1", chunk_size=64, state=None,
                     return_state=False, form="chunked"):
    _checks.check_linear_inputs(queries.shape, keys.shape, values.shape, causal)
    _checks.checked_choice("feature_map", feature_map, _checks.FEATURE_MAPS)
    _checks.checked_choice("form", form, _checks.LINEAR_FORMS)
    chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
    lead, dk, dv = queries.shape[:-2], queries.shape[-1], values.shape[-1]
    if state is None:
        state = (np.zeros((*lead, dk, dv), ctx=queries.ctx), np.zeros((*lead, dk), ctx=queries.ctx))
    _checks.check_state("state", state, ((*lead, dk, dv), (*lead, dk)), "a tuple (S, z)")
    S, z = state
    q, k = _feature_map(queries, feature_map), _feature_map(keys, feature_map)  # (..., q, dk), (..., k, dk)
    if not causal:                                                     # every query reads every key
        S, z = S + k.swapaxes(-1, -2) @ values, z + k.sum(-2)         # (..., dk, dv), (..., dk)
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
    outs = []
    for t in range(q.shape[-2]):
        S = np.exp(log_alpha[..., t, None, None]) * S               # (..., dk, dv)
        error = v[..., t, :] - (k[..., t, :, None] * S).sum(-2)        # (..., dv): v_t - S^T k_t
        S = S + k[..., t, :, None] * (beta[..., t, None] * error)[..., None, :]
        outs.append((q[..., t, :, None] * S).sum(-2))                  # (..., dv)
    return np.stack(outs, -2), S                                    # (..., T, dv)


def _unit_lower_solve(A, B):
    """X with (I + tril(A, -1)) X = B: forward substitution, batched over the leading axes."""
    F, ones = _F(A), _F(A).np.ones_like(A)
    return F.np.linalg.solve(F.np.tril(ones) - F.np.tril(ones, -1) + F.np.tril(A, -1), B)  # the diagonal: 1 - 0


def _wy(q, k, v, G, G_end, beta):
    """The WY/UT form's work within chunks (..., c, f), whatever the state before them (Yang et al.):
    the delta updates are one lower-triangular solve (the UT transform) for the new values
    u = beta (v - S^T k) the positions would write, u - w S once S is known. G (..., c) is the
    cumulative log decay, so the decay between positions j <= i is exp(G_i - G_j); G_end (..., 1)
    the chunk's last; beta (..., c, 1). -> u, w, the causal scores, the queries decayed from the
    chunk's start, the keys decayed to its end. Arrays or graph symbols (no `...` indexing here)."""
    F = _F(q)
    exp_G = F.np.expand_dims(F.np.exp(G), -1)                          # (..., c, 1)
    decay = F.np.tril(F.np.exp(F.np.tril(F.np.expand_dims(G, -1) - F.np.expand_dims(G, -2))))  # (..., c, c), j <= i
    system = F.np.matmul(beta * k, F.np.swapaxes(k, -1, -2)) * decay   # (..., c, c)
    u = _unit_lower_solve(system, beta * v)                            # (..., c, dv): values to write
    w = _unit_lower_solve(system, beta * k * exp_G)                    # (..., c, dk): keys reading S
    attn = F.np.matmul(q, F.np.swapaxes(k, -1, -2)) * decay            # (..., c, c), j <= i
    k_decayed = k * F.np.expand_dims(F.np.exp(G_end - G), -1)          # (..., c, dk): to the chunk's end
    return u, w, attn, q * exp_G, k_decayed


def _carried(u, w, attn, q_decayed, k_decayed, G_end, S):
    """One chunk after the state S (..., dk, dv): its output (..., c, dv) and the state after it."""
    F = _F(u)
    new = u - F.np.matmul(w, S)                                        # (..., c, dv): the errors written
    out = F.np.matmul(q_decayed, S) + F.np.matmul(attn, new)           # (..., c, dv)
    S = F.np.expand_dims(F.np.exp(G_end), -1) * S + F.np.matmul(F.np.swapaxes(k_decayed, -1, -2), new)
    return out, S


def _delta_chunked(q, k, v, log_alpha, beta, S, chunk_size):
    """The WY/UT form: within each chunk of `chunk_size` (`_wy`, every chunk at once), then across
    the chunks, the state (`_carried`, one chunk after another)."""
    T = q.shape[-2]
    q, k, v = (_chunks(x, chunk_size) for x in (q, k, v))              # (..., n, c, f)
    G = _chunks(log_alpha[..., None], chunk_size)[..., 0]              # (..., n, c): padding decays by 1
    G = np.cumsum(G, axis=G.ndim - 1)                                  # (MXNet's cumsum refuses axis=-1)
    beta = _chunks(beta[..., None], chunk_size)                        # (..., n, c, 1): padding writes 0
    parts = _wy(q, k, v, G, G[..., -1:], beta)                         # each (..., n, c, f)
    outs = []
    for i in range(q.shape[-3]):
        out, S = _carried(*(x[..., i, :, :] for x in parts), G[..., i, -1:], S)
        outs.append(out)                                               # (..., c, dv)
    return _unchunked(np.stack(outs, -3), T), S


def _delta_whole(q, k, v, log_alpha, beta, S):
    """The WY/UT form with the whole sequence as its one chunk, on (b, heads, T, f) and gates (b, heads, T):
    what a hybridized graph runs, whose symbols have no length to count chunks by (O(T^2) memory and a
    (T, T) solve per head, as a chunk of T has)."""
    F = _F(q)
    G = F.np.cumsum(log_alpha, axis=2)                                 # (b, heads, T)
    G_end = G[:, :, -1:]                                               # (b, heads, 1)
    return _carried(*_wy(q, k, v, G, G_end, F.np.expand_dims(beta, -1)), G_end, S)


def gated_delta_rule(queries, keys, values, alpha, beta, *, chunk_size=64, state=None, return_state=False,
                     form="chunked"):
    _checks.check_linear_inputs(queries.shape, keys.shape, values.shape, True)
    _checks.check_gates(queries.shape, alpha.shape, beta.shape)
    _checks.check_decay_values(alpha.asnumpy())
    _checks.checked_choice("form", form, _checks.DELTA_FORMS)
    chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
    lead, dk, dv = queries.shape[:-2], queries.shape[-1], values.shape[-1]
    S = np.zeros((*lead, dk, dv), ctx=queries.ctx) if state is None else state
    _checks.check_state("state", S, ((*lead, dk, dv),), "an array S")
    out, S = _delta(queries, keys, values, np.log(alpha), beta, S, form, chunk_size)
    return (out, S) if return_state else out                           # (..., T, dv)


def _delta(queries, keys, values, log_alpha, beta, S, form, chunk_size):
    """The delta rule in `form` on L2-normalised keys and queries, the queries scaled by 1/sqrt(d_k)."""
    q = _l2_normalized(queries) / math.sqrt(queries.shape[-1])         # (..., T, dk)
    k = _l2_normalized(keys)                                           # (..., T, dk)
    if form == "recurrent":
        return _delta_recurrent(q, k, values, log_alpha, beta, S)
    return _delta_chunked(q, k, values, log_alpha, beta, S, chunk_size)


# --- the layer ------------------------------------------------------------------------


def _silu(x):
    return x * _F(x).npx.sigmoid(x)


class GatedDeltaNet(nn.HybridBlock):
    """Qwen3-Next's linear-attention layer with one key head per value head: dense maps to queries,
    keys and values, a short causal depthwise convolution over them (then SiLU), per-head gates
    beta = sigmoid(x W_b) and alpha = exp(-exp(A_log) softplus(x W_a + dt_bias)), the gated delta rule,
    an RMSNorm of each head's output gated by SiLU(x W_z), and W_o. Its cache is (conv, S): the last
    conv_size - 1 inputs of the convolution (b, conv_size - 1, channels) and the state (b, heads, dk, dv).

    The call checks the cache (zeros at the start) and runs `with_state`; a parent's graph (a
    TransformerLM's) calls `with_state` with the cache as two of its inputs.
    """

    def __init__(self, num_hiddens, num_heads, *, head_size=None, value_head_size=None, conv_size=4,
                 norm_eps=1e-6, chunk_size=64):
        super().__init__()
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
        dense = lambda n_in, n_out: nn.Dense(n_out, use_bias=False, flatten=False, in_units=n_in)  # noqa: E731
        self.W_q, self.W_k, self.W_v, self.W_z = dense(h, H * dk), dense(h, H * dk), dense(h, H * dv), dense(h, H * dv)
        self.W_b, self.W_a, self.W_o = dense(h, H), dense(h, H), dense(H * dv, h)
        self.conv = self.params.get("conv", shape=(K, 2 * H * dk + H * dv), init=init.Uniform(1 / math.sqrt(K)))
        self.dt_bias = self.params.get("dt_bias", shape=(H,), init="ones")
        self.A_log = self.params.get("A_log", shape=(H,), init=init.Constant(onp.log(onp.linspace(1.0, 16.0, H))))
        self.gamma = self.params.get("gamma", shape=(dv,), init="ones")
        self.initialize(init.Xavier(rnd_type="uniform", factor_type="in", magnitude=1))

    def empty_cache(self, X):
        """The cache before the first position of X (b, T, num_hiddens): zeros (conv, S)."""
        return self.cache_inputs(X.shape[0], None, X.ctx)

    def _heads(self, X, size):
        """(b, T, heads * size) -> (b, heads, T, size)."""
        F = _F(X)
        return F.np.swapaxes(F.npx.reshape(X, (-2, -2, self.num_heads, size)), 1, 2)

    def cache_inputs(self, batch, cache, ctx):
        """The cache checked, as (conv, S); zeros (b, conv_size - 1, channels), (b, heads, dk, dv) at the start."""
        H, dk, dv, K = self.num_heads, self.head_size, self.value_head_size, self.conv_size
        shapes = ((batch, K - 1, 2 * H * dk + H * dv), (batch, H, dk, dv))
        if cache is None:
            return tuple(np.zeros(shape, ctx=ctx) for shape in shapes)
        _checks.check_state("cache", cache, shapes, "a tuple (conv, S)")
        return tuple(cache)

    def __call__(self, X, *, cache=None, training=None):  # no dropout: `training` is ignored
        if _traced(self, X, cache=cache):
            return self.with_state(X, None, None)                        # nothing cached: zeros before X
        _checks.check_sequence_input(X.shape, self.W_q.weight.shape[1])      # Dense: (out, in)
        return self.with_state(X, *self.cache_inputs(X.shape[0], cache, X.ctx))

    def with_state(self, X, conv, S):
        """The graph on ready inputs, as a parent's graph calls it: -> (Y, (conv, S))."""
        Y, conv, S = nn.HybridBlock.__call__(self, X, conv, S)
        return Y, (conv, S)

    def hybrid_forward(self, F, X, conv_state, S, conv, dt_bias, A_log, gamma):
        H, dk, dv, K = self.num_heads, self.head_size, self.value_head_size, self.conv_size
        new = F.np.concatenate([self.W_q(X), self.W_k(X), self.W_v(X)], axis=-1)  # (b, T, channels): q, k, v
        if conv_state is None:                                           # traced without a cache
            conv_state = F.np.repeat(F.np.zeros_like(new[:, :1]), K - 1, axis=1)  # (b, K - 1, channels)
        mixed = F.np.concatenate([conv_state, new], axis=1)              # (b, K - 1 + T, channels)
        # causal and depthwise; each window ends K - 1 - i from the end (a graph knows no T)
        conv_out = sum(conv[i] * mixed[:, i:i - (K - 1) or None] for i in range(K))  # (b, T, channels)
        q, k, v = F.np.split(_silu(conv_out), [H * dk, 2 * H * dk], axis=-1)
        beta = F.np.swapaxes(F.npx.sigmoid(self.W_b(X)), 1, 2)           # (b, heads, T)
        a = self.W_a(X) + dt_bias
        log_alpha = F.np.swapaxes(-F.np.exp(A_log) * F.npx.activation(a, act_type="softrelu"), 1, 2)  # <= 0
        q, k, v = self._heads(q, dk), self._heads(k, dk), self._heads(v, dv)     # (b, heads, T, d)
        if isinstance(X, mx.sym.Symbol):  # no length to count chunks by: the whole sequence is one chunk
            if S is None:                                                # traced without a cache: nothing written
                S = F.np.zeros_like(F.np.matmul(F.np.swapaxes(k[:, :, :1], 2, 3), v[:, :, :1]))  # (b, heads, dk, dv)
            out, S = _delta_whole(_l2_normalized(q) / math.sqrt(dk), _l2_normalized(k), v, log_alpha, beta, S)
        else:
            out, S = _delta(q, k, v, log_alpha, beta, S, "chunked", self.chunk_size)  # (b, heads, T, dv)
        out = out / F.np.sqrt((out ** 2).mean(-1, keepdims=True) + self.eps) * gamma  # RMSNorm per head
        out = F.np.swapaxes(out, 1, 2) * F.npx.reshape(_silu(self.W_z(X)), (-2, -2, H, dv))  # (b, T, heads, dv)
        conv_state = mixed[:, 1 - K:] if K > 1 else mixed[:, :0]         # the last K - 1 inputs
        return self.W_o(F.npx.reshape(out, (-2, -2, -5))), conv_state, S
