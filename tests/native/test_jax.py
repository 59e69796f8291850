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

from benchmarks.bench_jax import native_mha, padding_mask
from benchmarks.common import mha_weights
from d2lattn import jax as d2l

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
