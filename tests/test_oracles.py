"""The reference's independent oracles: causal masks with offsets and windows, ALiBi, RoPE,
grouped-query heads, RMSNorm, SwiGLU, cached causal self-attention, the language model,
blockwise attention and its merge, and the finite differences that give its gradients.

Every backend is tested against d2lattn.numpy, so the reference itself is checked here against
values worked by hand and closed forms written out below (explicit loops, complex numbers),
never against its own code path. Only d2lattn.numpy is imported: the module runs, quickly, in
every backend's session.
"""

import math

import numpy as np
import pytest

from d2lattn import numpy as ref


def drawn(mask):
    """A boolean (q, k) mask as rows of 'x' (may attend) and '.'."""
    return ["".join("x" if keep else "." for keep in row) for row in np.asarray(mask)]


def random_params(module, rng):
    params = {name: rng.normal(size=value.shape) for name, value in ref.get_params(module).items()}
    ref.set_params(module, params)
    return params


# --- causal masks -----------------------------------------------------------------------


def test_causal_mask_by_hand():
    assert drawn(ref.causal_mask(3)) == ["x..", "xx.", "xxx"]
    assert drawn(ref.causal_mask(2, 4)) == ["x...", "xx.."]
    # 3 queries continuing 2 cached positions: lower right
    assert drawn(ref.causal_mask(3, 5, offset=2)) == ["xxx..", "xxxx.", "xxxxx"]
    # each query sees itself and the one before it
    assert drawn(ref.causal_mask(3, 5, offset=2, window=2)) == [".xx..", "..xx.", "...xx"]
    assert drawn(ref.causal_mask(4, window=1)) == ["x...", ".x..", "..x.", "...x"]
    assert drawn(ref.causal_mask(4, window=3)) == ["x...", "xx..", "xxx.", ".xxx"]
    # a key shard that starts after the queries: query 0 sits at position -1 and sees nothing
    assert drawn(ref.causal_mask(3, 3, offset=-1)) == ["...", "x..", "xx."]
    assert drawn(ref.causal_mask(2, 3, offset=-3)) == ["...", "..."]
    assert drawn(ref.causal_mask(2, 4, offset=-1, window=1)) == ["....", "x..."]


@pytest.mark.parametrize("kwargs, name", [({"window": 0}, "window"), ({"window": 2.0}, "window"),
                                          ({"offset": 1.5}, "offset")])
def test_causal_mask_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ref.causal_mask(3, **kwargs)


# --- ALiBi ------------------------------------------------------------------------------


@pytest.mark.parametrize("n, slopes", [
    (1, [2**-8]),
    (2, [2**-4, 2**-8]),
    (3, [2**-4, 2**-8, 2**-2]),
    (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),
    (8, [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8]),
])
def test_alibi_slopes(n, slopes):
    np.testing.assert_allclose(ref.alibi_slopes(n), slopes, rtol=1e-15)


def test_alibi_bias_by_hand():
    # two heads, slopes 1/16 and 1/256; query i at position 1 + i, keys 0..2
    distance = np.array([[1, 0, 1],
                         [2, 1, 0]])
    np.testing.assert_allclose(ref.alibi_bias(2, 2, 3, offset=1), [-distance / 16, -distance / 256], rtol=1e-15)
    np.testing.assert_allclose(ref.alibi_bias(1, 2)[0], [[0, -1 / 256], [-1 / 256, 0]], rtol=1e-15)


# --- RoPE -------------------------------------------------------------------------------


def rotated_by_complex(X, offset, base, interleaved):
    """Pair (a, b) as a + ib, multiplied by exp(i p theta_i): the rotation by p theta_i."""
    d = X.shape[-1]
    a, b = (X[..., 0::2], X[..., 1::2]) if interleaved else (X[..., : d // 2], X[..., d // 2:])
    theta = np.array([base ** (-2 * i / d) for i in range(d // 2)])
    p = offset + np.arange(X.shape[-2])[:, None]
    z = (a + 1j * b) * np.exp(1j * p * theta)
    out = np.empty_like(X)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
    else:
        out[..., : d // 2], out[..., d // 2:] = z.real, z.imag
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("offset", [0, 5])
def test_rope_is_complex_multiplication(interleaved, offset):
    X = np.random.default_rng(0).normal(size=(2, 3, 4, 6))
    rope = ref.RotaryPositionalEncoding(6, base=100.0, interleaved=interleaved)
    np.testing.assert_allclose(rope(X, offset=offset), rotated_by_complex(X, offset, 100.0, interleaved),
                               atol=1e-13)


def test_rope_by_hand():
    # head_size 2: one pair, theta_0 = 1; (1, 0) at position 1 turns by one radian
    np.testing.assert_allclose(ref.RotaryPositionalEncoding(2)(np.array([[1.0, 0.0], [1.0, 0.0]])),
                               [[1, 0], [math.cos(1), math.sin(1)]], atol=1e-15)
    # head_size 4, split halves: pairs (x0, x2) turn by p, (x1, x3) by p / 100
    out = ref.RotaryPositionalEncoding(4)(np.array([[0.0, 1.0, 1.0, 0.0]]), offset=2)
    np.testing.assert_allclose(out, [[-math.sin(2), math.cos(0.02), math.cos(2), math.sin(0.02)]], atol=1e-15)


def test_rope_conventions_differ_by_a_permutation():
    """Interleaved RoPE is split-halves RoPE on features reordered [0, 2, 4, ..., 1, 3, 5, ...]."""
    X = np.random.default_rng(1).normal(size=(5, 8))
    perm = [0, 2, 4, 6, 1, 3, 5, 7]
    split, interleaved = ref.RotaryPositionalEncoding(8), ref.RotaryPositionalEncoding(8, interleaved=True)
    np.testing.assert_allclose(split(X[:, perm], offset=3), interleaved(X, offset=3)[:, perm], atol=1e-13)
    assert not np.allclose(split(X, offset=3), interleaved(X, offset=3))


def test_rope_dot_products_depend_on_the_distance_only():
    q, k = np.random.default_rng(2).normal(size=(2, 1, 8))
    rope = ref.RotaryPositionalEncoding(8)
    dots = [float(rope(q, offset=m)[0] @ rope(k, offset=m - 3)[0]) for m in (3, 10, 57)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-12)


def test_rope_odd_head_size():
    with pytest.raises(ValueError, match="head_size"):
        ref.RotaryPositionalEncoding(5)


# --- RMSNorm and SwiGLU -----------------------------------------------------------------


def test_rmsnorm_by_hand():
    norm = ref.RMSNorm(4)
    ref.set_params(norm, {"gamma": np.array([1.0, 2.0, 3.0, 4.0])})
    # mean of squares: 4 and 1; nothing is subtracted
    X = np.array([[2.0, -2.0, 2.0, -2.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(norm(X), [[2 / math.sqrt(4 + 1e-6), -4 / math.sqrt(4 + 1e-6),
                                          6 / math.sqrt(4 + 1e-6), -8 / math.sqrt(4 + 1e-6)],
                                         np.array([1, 2, 3, 4]) / math.sqrt(1 + 1e-6)], rtol=1e-14)
    np.testing.assert_allclose(ref.RMSNorm(3, eps=1.0)(np.array([3.0, 0.0, 0.0])), [1.5, 0, 0], rtol=1e-14)


def test_swiglu_by_hand():
    ffn = ref.SwiGLUFFN(1, 1)
    ref.set_params(ffn, {"W_gate": np.array([[1.0]]), "W_up": np.array([[2.0]]), "W_down": np.array([[3.0]])})
    x = math.log(3)  # sigmoid(ln 3) = 3/4, so silu(x) * 2x * 3 = 4.5 x^2
    np.testing.assert_allclose(ffn(np.array([[x], [0.0]])), [[4.5 * x * x], [0.0]], rtol=1e-14)


def test_swiglu_closed_form():
    rng = np.random.default_rng(3)
    ffn = ref.SwiGLUFFN(3, 5, 2)
    p = random_params(ffn, rng)
    X = rng.normal(size=(2, 4, 3))
    gate = X @ p["W_gate"]
    expected = (gate / (1 + np.exp(-gate)) * (X @ p["W_up"])) @ p["W_down"]
    np.testing.assert_allclose(ffn(X), expected, rtol=1e-12)
    assert ref.get_params(ref.SwiGLUFFN(3, 5))["W_down"].shape == (5, 3)


# --- attention heads, written out one head at a time ------------------------------------------


def heads_by_loops(Xq, Xkv, p, num_heads, num_kv_heads, *, keep=None, bias=None, rope_base=None):
    """Multi-head attention, one query head h at a time, with key/value head h // group;
    keep (q, k) booleans, bias (heads, q, k); rope at positions 0, 1, ... of Xq and Xkv."""
    h = p["W_q"].shape[1]
    dh, group = h // num_heads, num_heads // num_kv_heads
    Q, K, V = Xq @ p["W_q"] + p.get("b_q", 0), Xkv @ p["W_k"] + p.get("b_k", 0), Xkv @ p["W_v"] + p.get("b_v", 0)
    outs, weights = [], []
    for head in range(num_heads):
        kv = head // group
        q, k, v = Q[..., head * dh:(head + 1) * dh], K[..., kv * dh:(kv + 1) * dh], V[..., kv * dh:(kv + 1) * dh]
        if rope_base is not None:
            q, k = rotated_by_complex(q, 0, rope_base, False), rotated_by_complex(k, 0, rope_base, False)
        scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(dh) + (0 if bias is None else bias[head])
        scores = np.where(keep, scores, -np.inf) if keep is not None else scores
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        outs.append(w @ v)
        weights.append(w)
    return np.concatenate(outs, -1) @ p["W_o"] + p.get("b_o", 0), np.stack(weights, 1)


@pytest.mark.parametrize("num_kv_heads, bias", [(4, False), (2, True), (1, False)])
def test_grouped_query_attention(num_kv_heads, bias):
    rng = np.random.default_rng(4)
    mha = ref.MultiHeadAttention(8, 4, bias=bias, num_kv_heads=num_kv_heads, key_size=3, value_size=3)
    p = random_params(mha, rng)
    assert p["W_k"].shape == p["W_v"].shape == (3, num_kv_heads * 2)
    queries, keys = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 5, 3))
    score_bias = ref.alibi_bias(4, 3, 5, offset=2)
    out = mha(queries, keys, keys, score_bias=score_bias, mask=ref.causal_mask(3, 5, offset=2))
    expected, weights = heads_by_loops(queries, keys, p, 4, num_kv_heads, keep=np.tril(np.ones((3, 5)), 2) > 0,
                                       bias=score_bias)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(mha.attention_weights, weights, atol=1e-12)


def test_score_bias_adds_to_the_scaled_scores_and_masking_wins():
    q, k, v = np.array([[[2.0, 0.0]]]), np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]), np.eye(3)[None]
    # scaled scores sqrt(2), 0, sqrt(2); biased 0, 0, +inf-like (masked away)
    bias = np.array([-math.sqrt(2), 0.0, 50.0])
    attention = ref.DotProductAttention()
    out = attention(q, k, v, np.array([2]), score_bias=bias)
    np.testing.assert_allclose(out, [[[0.5, 0.5, 0.0]]], atol=1e-15)


# --- causal self-attention with a cache --------------------------------------------------------


def test_causal_self_attention_is_causal_multi_head_attention():
    rng = np.random.default_rng(5)
    layer, mha = ref.CausalSelfAttention(8, 2, rope_base=None), ref.MultiHeadAttention(8, 2)
    ref.set_params(mha, random_params(layer, rng))
    X = rng.normal(size=(2, 6, 8))
    Y, (keys, values) = layer(X)
    np.testing.assert_allclose(Y, mha(X, X, X, mask=ref.causal_mask(6)), atol=1e-13)
    assert keys.shape == values.shape == (2, 2, 6, 4)


@pytest.mark.parametrize("num_kv_heads, window", [(4, None), (2, 3), (1, 1)])
def test_causal_self_attention_by_loops(num_kv_heads, window):
    """Rope at absolute positions, grouped heads, a sliding window; the cache holds rotated keys."""
    rng = np.random.default_rng(6)
    layer = ref.CausalSelfAttention(8, 4, num_kv_heads=num_kv_heads, window=window, rope_base=50.0, bias=True)
    p = random_params(layer, rng)
    X = rng.normal(size=(2, 6, 8))
    i, j = np.arange(6)[:, None], np.arange(6)
    keep = (j <= i) & ((i - j < window) if window else True)
    expected, weights = heads_by_loops(X, X, p, 4, num_kv_heads, keep=keep, rope_base=50.0)
    Y, (keys, values, *_) = layer(X)   # a windowed layer's cache is its rolling buffer, its last positions
    np.testing.assert_allclose(Y, expected, atol=1e-12)
    np.testing.assert_allclose(layer.attention_weights, weights, atol=1e-12)
    assert keys.shape[2] == (6 if window is None else max(window - 1, 1))
    K, V = X @ p["W_k"] + p["b_k"], X @ p["W_v"] + p["b_v"]                   # (b, T, kv_heads * 2)
    kept = slice(6 - keys.shape[2], 6)
    for g in range(num_kv_heads):
        np.testing.assert_allclose(keys[:, g], rotated_by_complex(K[..., 2 * g:2 * g + 2], 0, 50.0, False)[:, kept],
                                   atol=1e-13)
        np.testing.assert_allclose(values[:, g], V[:, kept, 2 * g:2 * g + 2], atol=1e-13)


@pytest.mark.parametrize("pieces", [(7,), (4, 1, 1, 1), (1, 1, 1, 1, 1, 1, 1), (2, 5), (3, 2, 2)])
def test_cached_pieces_equal_the_full_pass(pieces):
    rng = np.random.default_rng(7)
    layer = ref.CausalSelfAttention(8, 4, num_kv_heads=2, window=3)
    random_params(layer, rng)
    X = rng.normal(size=(2, 7, 8))
    full, full_cache = layer(X)
    outs, cache, start = [], None, 0
    for size in pieces:
        out, cache = layer(X[:, start:start + size], cache=cache)
        outs.append(out)
        start += size
    seen = pieces[-1] + (2 if len(pieces) > 1 else 0)  # the last piece and the rolling buffer's w - 1 = 2
    assert layer.attention_weights.shape == (2, 4, pieces[-1], seen)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-13)
    for a, b in zip(cache, full_cache):
        np.testing.assert_allclose(a, b, atol=1e-13)


def test_cache_from_another_layer():
    layer = ref.CausalSelfAttention(8, 4, num_kv_heads=2)
    _, cache = ref.CausalSelfAttention(8, 4)(np.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match="cache"):
        layer(np.zeros((1, 1, 8)), cache=cache)


# --- the language model -----------------------------------------------------------------------


def lm_by_hand(tokens, p, num_layers, num_heads, num_kv_heads):
    """Embedding, pre-norm blocks (RMSNorm, causal attention with RoPE, SwiGLU), RMSNorm, W_out."""
    def rms(X, gamma):
        return X / np.sqrt((X**2).mean(-1, keepdims=True) + 1e-6) * gamma

    X = p["embedding"][tokens]
    T = tokens.shape[1]
    for n in range(num_layers):
        b = {name.removeprefix(f"blocks.{n}.attention."): v for name, v in p.items()
             if name.startswith(f"blocks.{n}.attention.")}
        X = X + heads_by_loops(rms(X, p[f"blocks.{n}.norm1.gamma"]), rms(X, p[f"blocks.{n}.norm1.gamma"]), b,
                               num_heads, num_kv_heads, keep=np.tril(np.ones((T, T))) > 0, rope_base=10000.0)[0]
        H = rms(X, p[f"blocks.{n}.norm2.gamma"])
        gate = H @ p[f"blocks.{n}.ffn.W_gate"]
        X = X + (gate / (1 + np.exp(-gate)) * (H @ p[f"blocks.{n}.ffn.W_up"])) @ p[f"blocks.{n}.ffn.W_down"]
    return rms(X, p["norm.gamma"]) @ p["W_out"]


def test_transformer_lm_by_hand_and_its_parameter_names():
    rng = np.random.default_rng(8)
    model = ref.TransformerLM(11, 8, 4, 2, 12, num_kv_heads=2)
    p = random_params(model, rng)
    block = {"norm1.gamma": (8,), "attention.W_q": (8, 8), "attention.W_k": (8, 4), "attention.W_v": (8, 4),
             "attention.W_o": (8, 8), "norm2.gamma": (8,), "ffn.W_gate": (8, 12), "ffn.W_up": (8, 12),
             "ffn.W_down": (12, 8)}
    expected = {"embedding": (11, 8), "norm.gamma": (8,), "W_out": (8, 11),
                **{f"blocks.{n}.{name}": shape for n in range(2) for name, shape in block.items()}}
    assert {name: v.shape for name, v in p.items()} == expected
    tokens = rng.integers(0, 11, size=(2, 5))
    logits, cache = model(tokens)
    np.testing.assert_allclose(logits, lm_by_hand(tokens, p, 2, 4, 2), atol=1e-12)
    assert len(cache) == 2 and cache[0][0].shape == (2, 2, 5, 2)


def test_generate_greedy_by_hand_with_and_without_cache():
    rng = np.random.default_rng(9)
    model = ref.TransformerLM(7, 8, 2, 1, 8, window=3)
    random_params(model, rng)
    prompt = rng.integers(0, 7, size=(3, 4))
    tokens = prompt
    for _ in range(5):  # greedy: the most likely next token of the whole sequence so far, fed back in
        tokens = np.concatenate([tokens, model(tokens)[0][:, -1].argmax(-1)[:, None]], 1)
    for use_cache in (True, False):
        np.testing.assert_array_equal(ref.generate(model, prompt, 5, use_cache=use_cache), tokens)


def test_save_and_load_params(tmp_path):
    model, other = ref.TransformerLM(5, 4, 2, 2, 6), ref.TransformerLM(5, 4, 2, 2, 6)
    params = random_params(model, np.random.default_rng(10))
    ref.save_params(model, tmp_path / "lm.safetensors")
    ref.load_params(other, tmp_path / "lm.safetensors")
    for name, value in ref.get_params(other).items():
        np.testing.assert_array_equal(value, params[name].astype(np.float32))
    with pytest.raises(ValueError, match="missing"):
        ref.load_params(ref.TransformerLM(5, 4, 2, 3, 6), tmp_path / "lm.safetensors")


# --- blockwise attention and the merge ---------------------------------------------------------


def attention_by_rows(Q, K, V, lens=None, causal=False, offset=0):
    """softmax(q K^T / sqrt(d)) V one query row at a time over its kept keys; lse of the row."""
    out, lse = np.zeros(Q.shape[:-1] + V.shape[-1:]), np.full(Q.shape[:-1], -np.inf)
    for index in np.ndindex(Q.shape[:-2]):
        for i in range(Q.shape[-2]):
            length = K.shape[-2] if lens is None else (lens[index[0]] if lens.ndim == 1 else lens[index[0], i])
            kept = [j for j in range(K.shape[-2]) if j < length and (not causal or j <= offset + i)]
            if kept:
                s = K[index][kept] @ Q[index][i] / math.sqrt(Q.shape[-1])
                lse[index + (i,)] = math.log(sum(math.exp(x) for x in s))
                out[index + (i,)] = np.exp(s - lse[index + (i,)]) @ V[index][kept]
    return out, lse


@pytest.mark.parametrize("block_size", [1, 3, 7, 10])
@pytest.mark.parametrize("causal, offset", [(False, 0), (True, 0), (True, 2), (True, -2), (True, -5)])
@pytest.mark.parametrize("lens", [None, "sequence", "query"])
def test_blockwise_attention_is_softmax_attention(block_size, causal, offset, lens):
    rng = np.random.default_rng(11)
    Q, K, V = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 7, 5)), rng.normal(size=(2, 3, 7, 2))
    lens = {None: None, "sequence": np.array([0, 5]), "query": np.array([[7, 2, 0, 9], [1, 3, 4, 6]])}[lens]
    out, lse = ref.blockwise_attention(Q, K, V, lens, causal=causal, offset=offset, block_size=block_size,
                                       return_lse=True)
    expected, expected_lse = attention_by_rows(Q, K, V, lens, causal, offset)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(lse, expected_lse, atol=1e-12)  # -inf where the row is empty
    np.testing.assert_array_equal(ref.blockwise_attention(Q, K, V, lens, causal=causal, offset=offset,
                                                          block_size=block_size), out)


def test_blockwise_attention_by_hand():
    # one query, keys with scaled scores 0 and ln 3 (d = 1): weights 1/4, 3/4; lse = ln 4
    q, k, v = np.array([[[1.0]]]), np.array([[[0.0], [math.log(3)]]]), np.array([[[4.0], [8.0]]])
    for block_size in (1, 2):
        out, lse = ref.blockwise_attention(q, k, v, block_size=block_size, return_lse=True)
        np.testing.assert_allclose(out, [[[7.0]]], rtol=1e-14)
        np.testing.assert_allclose(lse, [[math.log(4)]], rtol=1e-14)
    # large scores: no overflow (the running max), the same weights
    out, lse = ref.blockwise_attention(q, k + 1000, v, block_size=1, return_lse=True)
    np.testing.assert_allclose(out, [[[7.0]]], rtol=1e-12)
    np.testing.assert_allclose(lse, [[1000 + math.log(4)]], rtol=1e-14)


@pytest.mark.parametrize("split", [0, 3, 7])
@pytest.mark.parametrize("causal, offset", [(False, 0), (True, 1), (True, -2)])
def test_merging_two_halves_gives_the_full_result(split, causal, offset):
    rng = np.random.default_rng(12)
    Q, K, V = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 7, 3)), rng.normal(size=(2, 7, 2))
    lens = np.array([2, 6])
    parts = [ref.blockwise_attention(Q, K[:, :split], V[:, :split], np.minimum(lens, split), causal=causal,
                                     offset=offset, block_size=2, return_lse=True),
             ref.blockwise_attention(Q, K[:, split:], V[:, split:], np.maximum(lens - split, 0), causal=causal,
                                     offset=offset - split, block_size=2, return_lse=True)]
    out, lse = ref.merge_attention([o for o, _ in parts], [s for _, s in parts])
    expected, expected_lse = attention_by_rows(Q, K, V, lens, causal, offset)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(lse, expected_lse, atol=1e-12)


def test_merge_by_hand():
    # lse 0 and ln 3: weights 1/4 and 3/4, lse ln 4; a part with lse -inf counts for nothing;
    # a row empty in every part stays 0 with lse -inf
    outputs = [np.array([[4.0], [1.0], [0.0]]), np.array([[8.0], [0.0], [0.0]])]
    lses = [np.array([0.0, 2.0, -np.inf]), np.array([math.log(3), -np.inf, -np.inf])]
    out, lse = ref.merge_attention(outputs, lses)
    np.testing.assert_allclose(out, [[7.0], [1.0], [0.0]], rtol=1e-14)
    np.testing.assert_allclose(lse, [math.log(4), 2.0, -np.inf], rtol=1e-14)


def test_finite_differences_through_an_empty_rows_lse():
    """The lse of an empty row is -inf whatever the inputs: a constant, with zero gradient."""
    rng = np.random.default_rng(13)
    Q, K, V = rng.normal(size=(2, 2, 3)), rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 3, 2))
    projection = (rng.normal(size=(2, 2, 2)), rng.normal(size=(2, 2)))
    (out, lse), grads, _ = ref.value_and_grads(ref.blockwise_attention, [Q, K, V], projection,
                                               valid_lens=np.array([0, 3]), block_size=2, return_lse=True)
    assert np.isneginf(lse[0]).all() and np.isfinite(lse[1]).all()
    assert all(np.isfinite(g).all() for g in grads)
    # d lse / d q = sum_j w_j k_j / sqrt(d), the weights' average of the keys
    w = np.exp(K[1] @ Q[1].T / math.sqrt(3) - lse[1])                          # (k, q)
    dq = projection[1][1][:, None] * (w.T @ K[1]) / math.sqrt(3)
    _, (dq_lse_only, _, _), _ = ref.value_and_grads(ref.blockwise_attention, [Q, K, V],
                                                    (np.zeros((2, 2, 2)), projection[1]),
                                                    valid_lens=np.array([0, 3]), block_size=2, return_lse=True)
    np.testing.assert_allclose(dq_lse_only[1], dq, atol=1e-7)
    np.testing.assert_array_equal(dq_lse_only[0], 0.0)


# --- the reference's finite differences, checked against gradients written out by hand -----------


def test_finite_differences_parameter_path_layer_norm():
    """For sum(LayerNorm(X) * P): d/d beta = sum of P over positions, d/d gamma = sum of P * X_hat."""
    rng = np.random.default_rng(2)
    X, P = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    norm = ref.LayerNorm(4)
    ref.set_params(norm, {"gamma": rng.normal(size=4), "beta": rng.normal(size=4)})
    _, _, grads = ref.value_and_grads(norm, [X], P)
    X_hat = (X - X.mean(-1, keepdims=True)) / np.sqrt(X.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(grads["beta"], P.sum((0, 1)), atol=1e-7)
    np.testing.assert_allclose(grads["gamma"], (P * X_hat).sum((0, 1)), atol=1e-7)


def test_finite_differences_parameter_path_attention_values():
    """One head, W_o = I: out = A (X_v W_v), so d/d W_v of sum(out * P) = sum_b X_v^T (A^T P)."""
    rng = np.random.default_rng(3)
    Xq, Xk, Xv, P = (rng.normal(size=s) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 4), (2, 3, 4)))
    mha = ref.MultiHeadAttention(4, 1)
    ref.set_params(mha, {"W_q": rng.normal(size=(4, 4)), "W_k": rng.normal(size=(4, 4)),
                         "W_v": rng.normal(size=(4, 4)), "W_o": np.eye(4)})
    _, (_, _, dXv), grads = ref.value_and_grads(mha, [Xq, Xk, Xv], P, training=False)
    A = mha.attention_weights[:, 0]                                      # (b, q, k)
    W_v = ref.get_params(mha)["W_v"]
    np.testing.assert_allclose(grads["W_v"], sum(Xv[b].T @ (A[b].T @ P[b]) for b in range(2)), atol=1e-6)
    np.testing.assert_allclose(dXv, (np.swapaxes(A, 1, 2) @ P) @ W_v.T, atol=1e-6)  # and the input path
    np.testing.assert_allclose(grads["W_o"], sum((A[b] @ Xv[b] @ W_v).T @ P[b] for b in range(2)), atol=1e-6)


def test_finite_differences_two_outputs():
    """A tuple output takes one projection each: d/dX of sum(softmax(X) P1) + sum(tanh(X) P2)."""
    rng = np.random.default_rng(4)
    X, P1, P2 = (rng.normal(size=(1, 2, 3)) for _ in range(3))
    out, (grad,), params = ref.value_and_grads(lambda x: (ref.masked_softmax(x), ref.tanh(x)), [X], (P1, P2))
    s = np.exp(X) / np.exp(X).sum(-1, keepdims=True)
    want = s * (P1 - (s * P1).sum(-1, keepdims=True)) + (1 - np.tanh(X) ** 2) * P2
    np.testing.assert_allclose(grad, want, atol=1e-8)
    assert isinstance(out, tuple) and len(out) == 2 and params == {}
