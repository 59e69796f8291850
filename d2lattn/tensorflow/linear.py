"""Attention with a state of constant size: linear attention and the gated delta rule, each in its
equivalent forms, and GatedDeltaNet, the layer built around the delta rule.

A state S (..., d_k, d_v) holds what the keys wrote, one (d_k, d_v) matrix per head; a query reads it
as q^T S. The chunked forms pad the sequence to whole chunks with positions that write nothing. The
loops over positions and chunks are tf.while_loop (`_scan`): one traced step under tf.function. The
batch size and the length may be unknown there (None), so sizes come from tf.shape.
"""

import math

import keras
import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.attention import _dense_layer
from d2lattn.tensorflow.ops import _Layer


def _feature_map(x, name):
    """phi(x) > 0 for elu1 (elu(x) + 1, Katharopoulos et al.), >= 0 for relu."""
    return tf.nn.elu(x) + 1 if name == "elu1" else tf.nn.relu(x)


def _l2_normalized(x):
    """x / |x| over the features, with the 1e-6 under the root that Qwen3-Next and FLA use."""
    return x * tf.math.rsqrt(tf.reduce_sum(x * x, -1, keepdims=True) + 1e-6)


def _chunks(x, size):
    """(..., T, f) zero-padded to whole chunks and split: (..., n, size, f)."""
    rank, T = len(x.shape), tf.shape(x)[-2]
    x = tf.pad(x, [(0, 0)] * (rank - 2) + [(0, -T % size), (0, 0)])
    return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [(T + size - 1) // size, size, x.shape[-1]]], 0))


def _unchunked(x, T):
    """(..., n, size, f) -> (..., T, f), the padding dropped."""
    return tf.reshape(x, tf.concat([tf.shape(x)[:-3], [-1, x.shape[-1]]], 0))[..., :T, :]


def _tril(x):
    """x with the entries above the diagonal of its last two axes set to 0."""
    return tf.linalg.band_part(x, -1, 0)


def _scan(step, carry, xs):
    """lax.scan: carry, out = step(carry, [x[i] for x in xs]) along axis 0 of every x, as a
    tf.while_loop; -> (the last carry, the outs stacked on a new axis 0)."""
    outs = tf.TensorArray(xs[0].dtype, size=tf.shape(xs[0])[0])

    def body(i, carry, outs):
        carry, out = step(carry, [x[i] for x in xs])
        return i + 1, carry, outs.write(i, out)

    _, carry, outs = tf.while_loop(lambda i, *_: i < tf.shape(xs[0])[0], body, (0, carry, outs))
    return carry, outs.stack()


def _moved(x, source, destination):
    """x with axis `source` moved to `destination` (as jnp.moveaxis)."""
    axes = list(range(len(x.shape)))
    axes.insert(destination % len(axes), axes.pop(source % len(axes)))
    return tf.transpose(x, axes)


def _read(numerator, denominator):
    """numerator / denominator; 0 for a query that reads nothing (denominator 0, relu only)."""
    return numerator / tf.where(denominator > 0, denominator, 1.0)


# --- linear attention -------------------------------------------------------------------


def _linear_block(q, k, v, S, z):
    """Causal linear attention on one block of featurised positions after the state (S, z):
    o_i = (q_i^T S + sum_{j<=i} (q_i.k_j) v_j) / (q_i^T z + sum_{j<=i} q_i.k_j)."""
    scores = _tril(tf.matmul(q, k, transpose_b=True))                  # (..., c, c), j <= i kept
    numerator = q @ S + scores @ v                                     # (..., c, dv)
    denominator = (q @ z[..., None])[..., 0] + tf.reduce_sum(scores, -1)  # (..., c)
    S = S + tf.matmul(k, v, transpose_a=True)                          # (..., dk, dv)
    return _read(numerator, denominator[..., None]), S, z + tf.reduce_sum(k, -2)


def _linear_parallel(q, k, v, S, z):
    """The masked quadratic form: every position at once, O(T^2) time."""
    return _linear_block(q, k, v, S, z)


def _linear_recurrent(q, k, v, S, z):
    """The RNN: S += k_t v_t^T, z += k_t, o_t = q_t^T S / q_t^T z, one position at a time."""

    def step(carry, x):
        (S, z), (q_t, k_t, v_t) = carry, x                             # (..., dk) and (..., dv) each
        S = S + k_t[..., :, None] * v_t[..., None, :]                  # (..., dk, dv)
        z = z + k_t                                                    # (..., dk)
        numerator = tf.reduce_sum(q_t[..., :, None] * S, -2)           # (..., dv)
        return (S, z), _read(numerator, tf.reduce_sum(q_t * z, -1, keepdims=True))

    (S, z), outs = _scan(step, (S, z), [_moved(x, -2, 0) for x in (q, k, v)])  # outs (T, ..., dv)
    return _moved(outs, 0, -2), S, z                             # (..., T, dv)


def _linear_chunked(q, k, v, S, z, chunk_size):
    """Parallel within chunks of `chunk_size`, recurrent across them: O(T c) time."""
    T = tf.shape(q)[-2]
    q, k, v = (_chunks(x, chunk_size) for x in (q, k, v))              # (..., n, c, f): featurised, so padding writes 0

    def step(carry, x):
        out, S, z = _linear_block(*x, *carry)                          # out (..., c, dv)
        return (S, z), out

    (S, z), outs = _scan(step, (S, z), [_moved(x, -3, 0) for x in (q, k, v)])  # outs (n, ..., c, dv)
    return _unchunked(_moved(outs, 0, -3), T), S, z


def linear_attention(queries, keys, values, *, causal=True, feature_map="elu1", chunk_size=64, state=None,
                     return_state=False, form="chunked"):
    _checks.check_linear_inputs(queries.shape, keys.shape, values.shape, causal)
    _checks.checked_choice("feature_map", feature_map, _checks.FEATURE_MAPS)
    _checks.checked_choice("form", form, _checks.LINEAR_FORMS)
    chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
    lead, dk, dv = queries.shape[:-2], queries.shape[-1], values.shape[-1]
    if state is None:
        lead_now = tf.shape(queries)[:-2]                              # the batch size may be unknown
        state = (tf.zeros(tf.concat([lead_now, [dk, dv]], 0), queries.dtype),
                 tf.zeros(tf.concat([lead_now, [dk]], 0), queries.dtype))
    _checks.check_state("state", state, ((*lead, dk, dv), (*lead, dk)), "a tuple (S, z)")
    S, z = state
    q, k = _feature_map(queries, feature_map), _feature_map(keys, feature_map)  # (..., q, dk), (..., k, dk)
    if not causal:                                                     # every query reads every key
        S, z = S + tf.matmul(k, values, transpose_a=True), z + tf.reduce_sum(k, -2)  # (..., dk, dv), (..., dk)
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
        S = tf.exp(log_alpha_t[..., None, None]) * S                   # (..., dk, dv)
        error = v_t - tf.reduce_sum(k_t[..., :, None] * S, -2)         # (..., dv): v_t - S^T k_t
        S = S + k_t[..., :, None] * (beta_t[..., None] * error)[..., None, :]
        return S, tf.reduce_sum(q_t[..., :, None] * S, -2)             # (..., dv)

    xs = [_moved(x, -2, 0) for x in (q, k, v)] + [_moved(x, -1, 0) for x in (log_alpha, beta)]
    S, outs = _scan(step, S, xs)                                    # outs (T, ..., dv)
    return _moved(outs, 0, -2), S                                # (..., T, dv)


def _unit_lower_solve(A, B):
    """X with (I + tril(A, -1)) X = B: forward substitution, batched over the leading axes."""
    unit = tf.linalg.set_diag(_tril(A), tf.ones_like(A[..., 0]))       # I + tril(A, -1)
    return tf.linalg.triangular_solve(unit, B, lower=True)


def _delta_chunked(q, k, v, log_alpha, beta, S, chunk_size):
    """The WY/UT form (Yang et al.): within a chunk, the delta updates are one lower-triangular solve
    (the UT transform) for the new values u = beta (v - S^T k) all positions would write; across chunks,
    the state. The cumulative log decay G_i gives the decay between positions j <= i as exp(G_i - G_j)."""
    T = tf.shape(q)[-2]
    q, k, v = (_chunks(x, chunk_size) for x in (q, k, v))              # (..., n, c, f)
    G = tf.cumsum(_chunks(log_alpha[..., None], chunk_size)[..., 0], -1)  # (..., n, c): padding decays by 1
    beta = _chunks(beta[..., None], chunk_size)                        # (..., n, c, 1): padding writes 0
    decay = _tril(tf.exp(_tril(G[..., :, None] - G[..., None, :])))  # (..., n, c, c), j <= i
    system = tf.matmul(beta * k, k, transpose_b=True) * decay          # (..., n, c, c)
    u = _unit_lower_solve(system, beta * v)                            # (..., n, c, dv): values to write
    w = _unit_lower_solve(system, beta * k * tf.exp(G)[..., None])  # (..., n, c, dk): keys reading S
    attn = tf.matmul(q, k, transpose_b=True) * decay                   # (..., n, c, c), j <= i
    q_decayed = q * tf.exp(G)[..., None]                            # (..., n, c, dk)
    k_decayed = k * tf.exp(G[..., -1:] - G)[..., None]              # (..., n, c, dk): to the chunk's end

    def step(S, x):
        u_i, w_i, q_i, attn_i, k_i, G_i = x                            # one chunk each
        new = u_i - w_i @ S                                            # (..., c, dv): the errors written
        out = q_i @ S + attn_i @ new                                   # (..., c, dv)
        return tf.exp(G_i[..., -1])[..., None, None] * S + tf.matmul(k_i, new, transpose_a=True), out

    xs = [_moved(x, -3, 0) for x in (u, w, q_decayed, attn, k_decayed)] + [_moved(G, -2, 0)]
    S, outs = _scan(step, S, xs)                                    # outs (n, ..., c, dv)
    return _unchunked(_moved(outs, 0, -3), T), S


def gated_delta_rule(queries, keys, values, alpha, beta, *, chunk_size=64, state=None, return_state=False,
                     form="chunked"):
    _checks.check_linear_inputs(queries.shape, keys.shape, values.shape, True)
    _checks.check_gates(queries.shape, alpha.shape, beta.shape)
    if tf.executing_eagerly():                                         # values are unknown while tracing
        _checks.check_decay_values(alpha.numpy())
    _checks.checked_choice("form", form, _checks.DELTA_FORMS)
    chunk_size = _checks.checked_positive_int("chunk_size", chunk_size)
    lead, dk, dv = queries.shape[:-2], queries.shape[-1], values.shape[-1]
    S = tf.zeros(tf.concat([tf.shape(queries)[:-2], [dk, dv]], 0), queries.dtype) if state is None else state
    _checks.check_state("state", S, ((*lead, dk, dv),), "an array S")
    out, S = _delta(queries, keys, values, tf.math.log(alpha), beta, S, form, chunk_size)
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
    return tf.nn.silu(x)


class GatedDeltaNet(_Layer):
    """Qwen3-Next's linear-attention layer with one key head per value head: dense maps to queries,
    keys and values, a short causal depthwise convolution over them (then SiLU), per-head gates
    beta = sigmoid(x W_b) and alpha = exp(-exp(A_log) softplus(x W_a + dt_bias)), the gated delta rule,
    an RMSNorm of each head's output gated by SiLU(x W_z), and W_o. Its cache is (conv, S): the last
    conv_size - 1 inputs of the convolution (b, conv_size - 1, channels) and the state (b, heads, dk, dv)."""

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
        self.W_q, self.W_k = _dense_layer(h, H * dk), _dense_layer(h, H * dk)
        self.W_v, self.W_z = _dense_layer(h, H * dv), _dense_layer(h, H * dv)
        self.W_b, self.W_a = _dense_layer(h, H), _dense_layer(h, H)
        bound = 1 / math.sqrt(K)
        self.conv = self.add_weight(shape=(K, 2 * H * dk + H * dv), name="conv",
                                    initializer=keras.initializers.RandomUniform(-bound, bound))
        self.dt_bias = self.add_weight(shape=(H,), initializer="ones", name="dt_bias")
        self.A_log = self.add_weight(shape=(H,), name="A_log",
                                     initializer=keras.initializers.Constant(tf.math.log(tf.linspace(1.0, 16.0, H))))
        self.gamma = self.add_weight(shape=(dv,), initializer="ones", name="gamma")
        self.W_o = _dense_layer(H * dv, h)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def empty_cache(self, X):
        """The cache before the first position of X (b, T, num_hiddens): zeros (conv, S)."""
        H, dk, dv, K = self.num_heads, self.head_size, self.value_head_size, self.conv_size
        b, channels = tf.shape(X)[0], 2 * H * dk + H * dv
        return (tf.zeros([b, K - 1, channels], X.dtype), tf.zeros([b, H, dk, dv], X.dtype))

    def _heads(self, X, size):
        """(b, T, heads * size) -> (b, heads, T, size)."""
        return tf.transpose(tf.reshape(X, [tf.shape(X)[0], tf.shape(X)[1], self.num_heads, size]), [0, 2, 1, 3])

    def call(self, X, *, cache=None, training=None, position=None):  # no positions: `position` is ignored
        H, dk, dv, K = self.num_heads, self.head_size, self.value_head_size, self.conv_size
        _checks.check_sequence_input(X.shape, self.W_q.kernel.shape[0])
        b, T = tf.shape(X)[0], tf.shape(X)[1]                            # either may be unknown while tracing
        channels = 2 * H * dk + H * dv
        cache = self.empty_cache(X) if cache is None else cache
        want = ((X.shape[0], K - 1, channels), (X.shape[0], H, dk, dv))  # the batch size may be None
        _checks.check_state("cache", cache, want, "a tuple (conv, S)")
        new = tf.concat([self.W_q(X), self.W_k(X), self.W_v(X)], -1)            # (b, T, channels): q, k, v
        mixed = tf.concat([cache[0], new], 1)                                   # (b, K - 1 + T, channels)
        conv = tf.add_n([self.conv[i] * mixed[:, i:i + T] for i in range(K)])  # (b, T, channels): causal, depthwise
        q, k, v = tf.split(_silu(conv), [H * dk, H * dk, H * dv], -1)
        beta = tf.sigmoid(self.W_b(X))                                   # (b, T, heads)
        log_alpha = -tf.exp(self.A_log) * tf.nn.softplus(self.W_a(X) + self.dt_bias)  # (b, T, heads): <= 0
        out, S = _delta(self._heads(q, dk), self._heads(k, dk), self._heads(v, dv),
                        tf.transpose(log_alpha, [0, 2, 1]), tf.transpose(beta, [0, 2, 1]), cache[1], "chunked",
                        self.chunk_size)  # (b, heads, T, dv)
        out = out * tf.math.rsqrt(tf.reduce_mean(out ** 2, -1, keepdims=True) + self.eps) * self.gamma  # per head
        out = tf.transpose(out, [0, 2, 1, 3]) * tf.reshape(_silu(self.W_z(X)), [b, T, H, dv])  # (b, T, heads, dv)
        return self.W_o(tf.reshape(out, [b, T, H * dv])), (mixed[:, tf.shape(mixed)[1] - (K - 1):], S)
