"""JAX's own attention against ours, with the same weights.

flax.nnx.MultiHeadAttention takes a mask (True = attend) broadcastable to
(b, heads, q, k); jax.nn.dot_product_attention takes (B, T, N, H) arrays and
key-padding lengths or a causal flag. Both give a query with nothing to attend
to uniform weights; ours gives it zeros by contract, so those rows are
compared only with what the contract says they are.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from d2lattn import jax as d2l
from tests import native
from tests.native.peers_jax import native_mha, padding_mask
from tests.native.weights import gqa_weights, mha_weights

B, Q, K, H, HEADS = 3, 5, 6, 16, 4
LENS = np.array([0, 4, 6], dtype=np.int32)   # sequence 0 has nothing to attend to


def _inputs(rng):
    """Distinct queries, keys and values, so a mixed-up argument order shows."""
    return [jnp.asarray(rng.normal(size=(B, n, H)).astype(np.float32)) for n in (Q, K, K)]


def _native(native, q, k, v, keep):
    """nnx.MultiHeadAttention's output and weights (b, heads, q, k), sown and captured."""
    out, captured = nnx.capture(native, nnx.Intermediate)(q, k, v, mask=keep, sow_weights=True)
    (weights,) = captured["attention_weights"].get_value()
    return np.asarray(out), np.asarray(weights)


def _masks(masking):
    """(valid_lens or None, our mask or None, nnx mask (b, 1, q, k), rows with something to attend to (b, q))."""
    lens = jnp.asarray(LENS) if masking in ("padding", "both") else None
    causal = d2l.causal_mask(Q, K) if masking in ("causal", "both") else None
    keep = jnp.ones((B, 1, Q, K), dtype=bool)
    if lens is not None:
        keep &= padding_mask(lens, K)
    if causal is not None:
        keep &= causal
    return lens, causal, keep, np.asarray(keep[:, 0].any(-1))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_multihead_matches_nnx_multiheadattention(bias, masking):
    rng = np.random.default_rng(0)
    params = mha_weights(bias, rng, H)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=bias)
    ours.eval()
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    q, k, v = _inputs(rng)
    lens, causal, keep, rows = _masks(masking)
    out = ours(q, k, v, lens, mask=causal)
    want, weights = _native(native, q, k, v, keep)
    np.testing.assert_allclose(np.asarray(out)[rows], want[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.attention_weights).transpose(0, 2, 1, 3)[rows],  # (b, q, heads, k)
                               weights.transpose(0, 2, 1, 3)[rows], atol=1e-5)
    # an empty row: our weights are exactly zero, so the output is W_o's bias alone
    assert np.all(np.asarray(ours.attention_weights).transpose(0, 2, 1, 3)[~rows] == 0)
    np.testing.assert_allclose(np.asarray(out)[~rows], np.broadcast_to(params.get("b_o", 0.0), (int((~rows).sum()), H)),
                               atol=1e-6)


@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_multihead_core_matches_jax_dot_product_attention(masking):
    """jax.nn.dot_product_attention on our own projections, then our W_o: our whole layer's output."""
    rng = np.random.default_rng(1)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=True)
    ours.eval()
    d2l.set_params(ours, mha_weights(True, rng, H))
    q, k, v = _inputs(rng)
    lens, causal, keep, rows = _masks(masking)
    out = ours(q, k, v, lens, mask=causal)

    def heads(X):
        return X.reshape(B, -1, HEADS, H // HEADS)                               # (B, T, N, H): JAX's layout

    core = jax.nn.dot_product_attention(heads(ours.W_q(q)), heads(ours.W_k(k)), heads(ours.W_v(v)),
                                        key_value_seq_lengths=lens, is_causal=causal is not None)
    want = ours.W_o(core.reshape(B, Q, H))                                       # (b, q, num_hiddens)
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(want)[rows], atol=1e-5)


@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_dot_product_matches_jax_dot_product_attention(masking):
    """Our (b, heads, q, dh) attention and our weights applied to V, against JAX's (B, T, N, H) one."""
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(B, HEADS, n, 8)).astype(np.float32)) for n in (Q, K, K))
    lens, causal, _, rows = _masks(masking)
    attention = d2l.DotProductAttention()
    attention.eval()
    out = attention(q, k, v, lens, mask=causal)                                  # (b, heads, q, dv)
    want = jax.nn.dot_product_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)),
                                        key_value_seq_lengths=lens, is_causal=causal is not None)
    want = np.asarray(want)                                                      # (b, q, heads, dv)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 2, 1, 3)[rows], want[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(attention.attention_weights @ v).transpose(0, 2, 1, 3)[rows],
                               want[rows], atol=1e-5)
    assert np.all(np.asarray(out).transpose(0, 2, 1, 3)[~rows] == 0)             # empty rows: zeros


def test_masked_softmax_matches_softmax_on_kept_positions():
    X = jnp.asarray(np.random.default_rng(3).normal(size=(B, Q, K)).astype(np.float32))
    weights = d2l.masked_softmax(X, LENS)
    for i, n in enumerate(LENS.tolist()):
        if n:
            np.testing.assert_allclose(weights[i, :, :n], jax.nn.softmax(X[i, :, :n], axis=-1), atol=1e-6)
        assert np.all(np.asarray(weights[i, :, n:]) == 0)


def test_jitted_multihead_matches_and_keeps_its_weights():
    """Under nnx.jit, outputs match nnx.MultiHeadAttention and `.attention_weights` come back with the state."""
    rng = np.random.default_rng(4)
    params = mha_weights(True, rng, H)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=True)
    ours.eval()
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    q, k, v = _inputs(rng)
    lens, _, keep, rows = _masks("padding")
    out = nnx.jit(lambda m, *x: m(*x))(ours, q, k, v, lens)
    want, weights = _native(native, q, k, v, keep)
    assert isinstance(ours.attention_weights, jax.Array) and not isinstance(ours.attention_weights, jax.core.Tracer)
    np.testing.assert_allclose(np.asarray(out)[rows], want[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.attention_weights).transpose(0, 2, 1, 3)[rows],
                               weights.transpose(0, 2, 1, 3)[rows], atol=1e-5)


def test_layer_norm_matches_nnx_layernorm():
    """Our LayerNorm from scratch against nnx.LayerNorm (epsilon 1e-5) with the same gamma (its scale)
    and beta (its bias)."""
    rng = np.random.default_rng(5)
    X = jnp.asarray(rng.normal(size=(B, Q, H)).astype(np.float32) * 3 + 1)
    gamma, beta = rng.normal(size=H).astype(np.float32), rng.normal(size=H).astype(np.float32)
    ours = d2l.LayerNorm(H)
    d2l.set_params(ours, {"gamma": gamma, "beta": beta})
    native = nnx.LayerNorm(H, epsilon=1e-5, rngs=nnx.Rngs(0))
    native.scale[...], native.bias[...] = gamma, beta
    np.testing.assert_allclose(np.asarray(ours(X)), np.asarray(native(X)), atol=1e-5)


def _gru_cell_params(cell, layer):
    """nnx.GRUCell's maps under our canonical names, for layer `layer`. Its kernels stack the gates
    (r, z, n) in columns; it has one bias per gate, on the input side (dense_i), and none inside the
    reset gate's product, so b_hh is 0: it runs a special case of our GRU."""
    h = cell.hidden_features
    cols = {"r": slice(0, h), "z": slice(h, 2 * h), "h": slice(2 * h, 3 * h)}
    W_i, W_h, b = (np.asarray(p[...]) for p in (cell.dense_i.kernel, cell.dense_h.kernel, cell.dense_i.bias))
    params = {f"l{layer}.W_x{g}": W_i[:, c] for g, c in cols.items()}
    params.update({f"l{layer}.W_h{g}": W_h[:, c] for g, c in cols.items()})
    params.update({f"l{layer}.b_r": b[cols["r"]], f"l{layer}.b_z": b[cols["z"]], f"l{layer}.b_xh": b[cols["h"]],
                   f"l{layer}.b_hh": np.zeros(h, np.float32)})
    return params


def test_gru_matches_nnx_gru_cell():
    """Our two-layer GRU against nnx.RNN(nnx.GRUCell) layer by layer, from a given state, with random biases."""
    rng = np.random.default_rng(6)
    cells = [nnx.GRUCell(n, 8, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(i)) for i, n in enumerate((5, 8))]
    ours = d2l.GRU(5, 8, num_layers=2)
    ours.eval()
    d2l.set_params(ours, {n: p for i, cell in enumerate(cells) for n, p in _gru_cell_params(cell, i).items()})
    X = jnp.asarray(rng.normal(size=(B, 7, 5)).astype(np.float32))
    state = jnp.asarray(rng.normal(size=(2, B, 8)).astype(np.float32))
    outputs, last = ours(X, state)
    want = X
    for i, cell in enumerate(cells):
        H, want = nnx.RNN(cell, return_carry=True)(want, initial_carry=state[i])   # (b, h), (b, T, h)
        np.testing.assert_allclose(np.asarray(last[i]), np.asarray(H), atol=1e-5)
    np.testing.assert_allclose(np.asarray(outputs), np.asarray(want), atol=1e-5)


# --- modern attention and decoder-only models ----------------------------------------------


def _rotate64(X, positions, base=10000.0, interleaved=False):
    """RoPE written as complex multiplication in float64: pair (a, b) is a + ib, times e^(i p theta_i)."""
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[-1]
    a, b = (X[..., 0::2], X[..., 1::2]) if interleaved else (X[..., : d // 2], X[..., d // 2:])
    z = (a + 1j * b) * np.exp(1j * np.outer(positions, base ** (-np.arange(0, d, 2) / d)))   # (..., T, d / 2)
    if interleaved:
        return np.stack([z.real, z.imag], -1).reshape(X.shape)
    return np.concatenate([z.real, z.imag], -1)


def _gqa64(params, X, heads, kv_heads, keep):
    """Grouped-query attention in float64, one head at a time: query head h reads key/value head
    h // (heads // kv_heads); `keep` (b, q, k) or None."""
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    X = np.asarray(X, np.float64)
    dh = p["W_q"].shape[1] // heads
    q, k, v = (X @ p[f"W_{x}"] + p.get(f"b_{x}", 0.0) for x in "qkv")
    outs = []
    for h in range(heads):
        g = h // (heads // kv_heads)
        scores = q[..., h * dh:(h + 1) * dh] @ np.swapaxes(k[..., g * dh:(g + 1) * dh], 1, 2) / np.sqrt(dh)
        scores = np.where(keep, scores, -np.inf) if keep is not None else scores
        w = np.exp(scores - scores.max(-1, keepdims=True))
        outs.append(w / w.sum(-1, keepdims=True) @ v[..., g * dh:(g + 1) * dh])    # (b, q, dh)
    return np.concatenate(outs, -1) @ p["W_o"] + p.get("b_o", 0.0)


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("masking", ["padding", "causal"])
def test_grouped_query_matches_nnx_multiheadattention(kv_heads, masking):
    """Flax's own num_kv_heads, the same grouping (query head h reads kv head h // group), same weights."""
    rng = np.random.default_rng(7)
    params = gqa_weights(mha_weights(True, rng, H), kv_heads, H, HEADS)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=True, num_kv_heads=kv_heads)
    ours.eval()
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS, kv_heads=kv_heads)
    q, k, v = _inputs(rng)
    lens, causal, keep, rows = _masks(masking)
    out = ours(q, k, v, lens, mask=causal)
    want, weights = _native(native, q, k, v, keep)
    assert ours.attention_weights.shape == (B, HEADS, Q, K)
    np.testing.assert_allclose(np.asarray(out)[rows], want[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.attention_weights).transpose(0, 2, 1, 3)[rows],
                               weights.transpose(0, 2, 1, 3)[rows], atol=1e-5)


def test_grouped_query_matches_float64_math():
    rng = np.random.default_rng(8)
    params = gqa_weights(mha_weights(True, rng, H), 2, H, HEADS)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=True, num_kv_heads=2)
    d2l.set_params(ours, params)
    X = rng.normal(size=(B, K, H)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(*(jnp.asarray(X),) * 3)), _gqa64(params, X, HEADS, 2, None), atol=1e-5)


@pytest.mark.parametrize("bias_kind", ["random", "alibi"])
def test_score_bias_matches_jax_dot_product_attention(bias_kind):
    """score_bias against jax.nn.dot_product_attention(bias=...), with a causal mask and key lengths:
    the outputs and the gradients with respect to the bias."""
    rng = np.random.default_rng(9)
    q, k, v = (jnp.asarray(rng.normal(size=(B, HEADS, n, 8)).astype(np.float32)) for n in (K, K, K))
    lens = jnp.asarray([2, 4, 6], dtype=jnp.int32)                               # every row keeps a key
    bias = (jnp.asarray(rng.normal(size=(HEADS, K, K)).astype(np.float32)) if bias_kind == "random"
            else d2l.alibi_bias(HEADS, K))                                         # (heads, q, k)
    P = jnp.asarray(rng.normal(size=(B, HEADS, K, 8)).astype(np.float32))
    attention = d2l.DotProductAttention()

    def ours(attention, bias):
        return jnp.sum(attention(q, k, v, lens, mask=d2l.causal_mask(K), score_bias=bias, training=False) * P)

    def native(bias):
        out = jax.nn.dot_product_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), bias=bias[None],
                                           is_causal=True, key_value_seq_lengths=lens)
        return jnp.sum(out.transpose(0, 2, 1, 3) * P)

    (got, d_got) = nnx.value_and_grad(ours, argnums=1)(attention, bias)
    (want, d_want) = jax.value_and_grad(native)(bias)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(d_got, d_want, atol=1e-5)
    assert np.abs(np.asarray(d_got)).max() > 0


@pytest.mark.parametrize("window", [1, 2, 4])
def test_sliding_window_matches_jax_local_window(window):
    """causal_mask(T, window=w) as jax.nn.dot_product_attention's is_causal with local_window_size (w - 1, 0)."""
    rng = np.random.default_rng(10)
    q, k, v = (jnp.asarray(rng.normal(size=(B, HEADS, 7, 8)).astype(np.float32)) for _ in range(3))
    out = d2l.DotProductAttention()(q, k, v, mask=d2l.causal_mask(7, window=window), training=False)
    want = jax.nn.dot_product_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), is_causal=True,
                                        local_window_size=(window - 1, 0))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want).transpose(0, 2, 1, 3), atol=1e-5)


def test_causal_mask_offset_and_window_follow_their_definition():
    for q, k, offset, window in [(3, 5, 2, None), (3, 5, 2, 2), (4, 4, 0, 3), (2, 6, -1, None), (5, 3, 1, 1)]:
        want = [[j <= offset + i and (window is None or offset + i - j < window) for j in range(k)] for i in range(q)]
        np.testing.assert_array_equal(np.asarray(d2l.causal_mask(q, k, offset=offset, window=window)), want)


def test_rms_norm_matches_nnx_rmsnorm():
    rng = np.random.default_rng(11)
    X = jnp.asarray(rng.normal(size=(B, Q, H)).astype(np.float32) * 3 + 1)
    gamma = rng.normal(size=H).astype(np.float32)
    ours = d2l.RMSNorm(H)
    d2l.set_params(ours, {"gamma": gamma})
    native = nnx.RMSNorm(H, epsilon=1e-6, rngs=nnx.Rngs(0))
    native.scale[...] = gamma
    np.testing.assert_allclose(np.asarray(ours(X)), np.asarray(native(X)), atol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_encoding_matches_complex_rotation_in_float64(interleaved):
    X = np.random.default_rng(12).normal(size=(B, HEADS, 5, 8)).astype(np.float32)
    rope = d2l.RotaryPositionalEncoding(8, base=100.0, interleaved=interleaved)
    got = np.asarray(rope(jnp.asarray(X), offset=7))
    np.testing.assert_allclose(got, _rotate64(X, np.arange(7, 12), 100.0, interleaved), atol=1e-5)


def test_causal_self_attention_matches_jax_gqa_with_window():
    """CausalSelfAttention (GQA, sliding window, RoPE) against jax.nn.dot_product_attention on GQA-shaped
    keys and values (B, T, kv_heads, dh), rotated in float64, with is_causal and local_window_size."""
    rng = np.random.default_rng(13)
    T, kv_heads, window = 6, 2, 3
    params = gqa_weights(mha_weights(False, rng, H), kv_heads, H, HEADS)
    ours = d2l.CausalSelfAttention(H, HEADS, num_kv_heads=kv_heads, window=window)
    d2l.set_params(ours, params)
    X = rng.normal(size=(B, T, H)).astype(np.float32)
    out, (keys, *_) = ours(jnp.asarray(X), training=False)        # a rolling buffer: the last window - 1 positions

    def heads(Y, n):
        return Y.reshape(B, T, n, -1)                                            # (B, T, N, dh)

    def rotate(Y):
        return _rotate64(Y.transpose(0, 2, 1, 3), np.arange(T)).transpose(0, 2, 1, 3).astype(np.float32)

    q, k = rotate(heads(X @ params["W_q"], HEADS)), rotate(heads(X @ params["W_k"], kv_heads))
    core = jax.nn.dot_product_attention(q, k, heads(X @ params["W_v"], kv_heads), is_causal=True,
                                        local_window_size=(window - 1, 0))
    np.testing.assert_allclose(np.asarray(out), np.asarray(core).reshape(B, T, H) @ params["W_o"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(keys), k.transpose(0, 2, 1, 3)[:, :, T - (window - 1):], atol=1e-5)


def test_generate_compiles_once_per_shape_not_per_token():
    """generate's compiled model call is traced for the prompt and for one token (cache), or once for the
    whole buffer (no cache), however many tokens it makes; both give the same tokens."""
    from d2lattn.jax.decoder import _logits

    model = d2l.TransformerLM(13, 16, 4, 2, 24, num_kv_heads=2, window=4)
    prompt = np.random.default_rng(14).integers(0, 13, (2, 3))
    before = _logits._cache_size()
    cached = d2l.generate(model, prompt, 12)
    assert _logits._cache_size() - before <= 2
    before = _logits._cache_size()
    np.testing.assert_array_equal(d2l.generate(model, prompt, 12, use_cache=False), cached)
    assert _logits._cache_size() - before <= 1


def test_dot_product_matches_float64_math_with_distinct_keys_and_values():
    q, k, v, lens, causal, keep, want = native.float64_case(dv=8)  # jax.nn wants values as wide as keys
    attention = d2l.DotProductAttention()
    attention.eval()
    np.testing.assert_allclose(np.asarray(attention(*map(jnp.asarray, (q, k, v, lens)), mask=causal)), want, atol=1e-5)
    theirs = jax.nn.dot_product_attention(*(jnp.asarray(x)[:, :, None] for x in (q, k, v)), mask=keep[:, None])
    live = keep.any(-1)                                   # jax.nn gives an empty row uniform weights; ours zeros
    np.testing.assert_allclose(np.asarray(theirs)[:, :, 0][live], want[live], atol=1e-5)


def test_modules_built_alike_start_alike_and_weights_are_not_parameters():
    """README: the default rngs=nnx.Rngs(0) gives two modules built alike the same weights, and
    .attention_weights (an nnx.Intermediate) is not among nnx.state(m, nnx.Param)."""
    a, b = d2l.MultiHeadAttention(8, 2), d2l.MultiHeadAttention(8, 2)
    for name, value in d2l.get_params(a).items():
        np.testing.assert_array_equal(value, d2l.get_params(b)[name])
    assert any(np.abs(v).max() > 0 for v in d2l.get_params(a).values())      # and they are not all zeros
    x = jnp.ones((1, 3, 8))
    a(x, x, x, training=False)
    assert a.attention_weights.shape == (1, 2, 3, 3)
    params = jax.tree_util.tree_leaves(nnx.state(a, nnx.Param))
    assert len(params) == 4 and all(p.shape == (8, 8) for p in params)      # W_q, W_k, W_v, W_o only


@pytest.mark.parametrize("window", [1, 5, 16])
def test_flex_window_matches_dot_product_attention_local_window(window):
    """flex_attention with window_mod(w) against jax.nn.dot_product_attention(is_causal=True,
    local_window_size=(w - 1, 0)): JAX's window counts past keys only, ours counts the query too
    (DESIGN.md), so w here is JAX's left + 1. Forward and gradients."""
    rng = np.random.default_rng(window)
    xs = [jnp.asarray(rng.normal(size=(2, 3, 40, 8)), jnp.float32) for _ in range(3)]  # (b, heads, T, d)
    swap = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  JAX's layout: (b, T, heads, d)
    ours = lambda q, k, v: d2l.flex_attention(q, k, v, mask_mod=d2l.window_mod(window), block_size=8)  # noqa: E731
    theirs = lambda q, k, v: swap(jax.nn.dot_product_attention(  # noqa: E731
        swap(q), swap(k), swap(v), is_causal=True, local_window_size=(window - 1, 0)))
    np.testing.assert_allclose(ours(*xs), theirs(*xs), atol=1e-5)
    projection = jnp.asarray(rng.normal(size=(2, 3, 40, 8)), jnp.float32)
    loss = lambda fn: lambda *xs: jnp.sum(fn(*xs) * projection)  # noqa: E731
    for g, w in zip(jax.grad(loss(ours), argnums=(0, 1, 2))(*xs), jax.grad(loss(theirs), argnums=(0, 1, 2))(*xs)):
        np.testing.assert_allclose(g, w, atol=1e-4)
