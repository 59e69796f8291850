"""latent: MultiHeadLatentAttention on the backend under test.

Beyond the harness (tests/cases.py): the output written out in NumPy from the parameters
(the DeepSeek-V2 equations, independent of the reference), the absorbed computation equal to
the naive one, the cache holding only the latents and the rotary keys, cached pieces equal to
the full pass, dropout and the training mode, and bad input. Hugging Face's DeepseekV3Attention
is the peer in tests/peer/test_latent_peer.py.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference
from tests.modes import dropout_tests
from tests.strategies import PROFILE
from tests.support import bad_input_test, random_params, t

# A few fixed sizes, so that eager JAX compiles few shapes: (b, T), then the constructor's sizes.
SIZES = [
    ((2, 5), {"num_hiddens": 8, "num_heads": 2, "kv_lora_rank": 4, "qk_nope_head_size": 3, "qk_rope_head_size": 2,
              "v_head_size": 3}),
    ((1, 6), {"num_hiddens": 12, "num_heads": 3, "kv_lora_rank": 5, "q_lora_rank": 6, "qk_nope_head_size": 2,
              "qk_rope_head_size": 4, "v_head_size": 2, "rope_base": 100.0}),
]


def pair(d2l, args, rng, scale=1.0):
    """The backend's naive and absorbed modules with the same random weights, and the weights."""
    params = random_params(reference.MultiHeadLatentAttention(**args), rng, scale)
    modules = [d2l.MultiHeadLatentAttention(**args, absorb=absorb) for absorb in (False, True)]
    for module in modules:
        d2l.set_params(module, params)
    return modules, params


def written_out(params, X, args):
    """DeepSeek-V2's MLA equations in plain NumPy (float64): decompressed keys and values per head,
    split-halves rotary pairs at positions 0 .. T - 1, scores scaled by 1/sqrt(dn + dr), causal."""
    heads, dn, dr, dv = (args[n] for n in ("num_heads", "qk_nope_head_size", "qk_rope_head_size", "v_head_size"))
    eps = args.get("norm_eps", 1e-6)
    base = args.get("rope_base", 10000.0)

    def rms(Z, gamma):
        return Z / np.sqrt((Z ** 2).mean(-1, keepdims=True) + eps) * gamma

    def rotate(Z):                                               # (..., T, dr), pairs (i, i + dr/2)
        angle = np.arange(Z.shape[-2])[:, None] * base ** (-np.arange(dr // 2) * 2 / dr)   # (T, dr/2)
        a, b = Z[..., :dr // 2], Z[..., dr // 2:]
        return np.concatenate([a * np.cos(angle) - b * np.sin(angle), a * np.sin(angle) + b * np.cos(angle)], -1)

    bsz, T, _ = X.shape
    q = X @ params["W_q"] if "W_q" in params else rms(X @ params["W_dq"], params["q_norm.gamma"]) @ params["W_uq"]
    q = q.reshape(bsz, T, heads, dn + dr).transpose(0, 2, 1, 3)  # (b, heads, T, dn + dr)
    c = rms(X @ params["W_dkv"], params["kv_norm.gamma"])        # (b, T, r)
    k_nope = (c @ params["W_uk"]).reshape(bsz, T, heads, dn).transpose(0, 2, 1, 3)
    v = (c @ params["W_uv"]).reshape(bsz, T, heads, dv).transpose(0, 2, 1, 3)
    k_rope = np.broadcast_to(rotate(X @ params["W_kr"])[:, None], (bsz, heads, T, dr))
    q = np.concatenate([q[..., :dn], rotate(q[..., dn:])], -1)
    k = np.concatenate([k_nope, k_rope], -1)                     # (b, heads, T, dn + dr)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dn + dr)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ v).transpose(0, 2, 1, 3).reshape(bsz, T, -1) @ params["W_o"]


@pytest.mark.parametrize("sizes", SIZES, ids=["dense-queries", "low-rank-queries"])
def test_equals_the_equations_written_out(d2l, sizes):
    (b, T), args = sizes
    (naive, absorbed), params = pair(d2l, args, np.random.default_rng(1), scale=2.0)
    X = np.random.default_rng(2).normal(size=(b, T, args["num_hiddens"]))
    want = written_out(params, X, args)
    for module in (naive, absorbed):
        np.testing.assert_allclose(d2l.to_numpy(module(d2l.tensor(X), training=False)[0]), want, atol=1e-5)


@settings(PROFILE, max_examples=6)
@given(data=st.data())
def test_absorbed_equals_naive_and_pieces_equal_the_full_pass(d2l, data):
    """Random weights (at several scales) and split points: the absorbed computation gives the naive
    one's outputs, attention weights and cache, and both, fed the sequence in pieces with the cache
    passed on, give the full pass's outputs and, for the last piece, its attention rows."""
    (b, T), args = data.draw(st.sampled_from(SIZES), label="sizes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    modules, _ = pair(d2l, args, rng, scale=data.draw(st.sampled_from([1.0, 4.0]), label="scale"))
    X = rng.normal(size=(b, T, args["num_hiddens"]))
    cut = data.draw(st.integers(1, T - 1), label="split point")
    runs = []
    for module in modules:
        full, cache = module(d2l.tensor(X), training=False)
        weights = d2l.to_numpy(module.attention_weights)
        first, piece_cache = module(d2l.tensor(X[:, :cut]), training=False)
        last, piece_cache = module(d2l.tensor(X[:, cut:]), cache=piece_cache, training=False)
        pieces = np.concatenate([d2l.to_numpy(first), d2l.to_numpy(last)], 1)
        np.testing.assert_allclose(pieces, d2l.to_numpy(full), atol=1e-5)
        np.testing.assert_allclose(d2l.to_numpy(module.attention_weights), weights[:, :, cut:], atol=1e-5)
        for ours, theirs in zip(piece_cache, cache):
            np.testing.assert_allclose(d2l.to_numpy(ours), d2l.to_numpy(theirs), atol=1e-6)
        runs.append((d2l.to_numpy(full), weights, [d2l.to_numpy(x) for x in cache]))
    (naive, naive_weights, naive_cache), (absorbed, absorbed_weights, absorbed_cache) = runs
    np.testing.assert_allclose(absorbed, naive, atol=1e-5 * max(1.0, np.abs(naive).max()))
    np.testing.assert_allclose(absorbed_weights, naive_weights, atol=1e-5)
    for a, n in zip(absorbed_cache, naive_cache):
        np.testing.assert_array_equal(a, n)


def test_cache_holds_only_latents_and_rotary_keys(d2l):
    """Per cached token kv_lora_rank + qk_rope_head_size numbers, whatever the number of heads:
    (latents (b, t, r), rotary keys (b, t, dr)); the weights of the last call (b, heads, T, t + T)."""
    for heads in (2, 8):
        mla = d2l.MultiHeadLatentAttention(16, heads, kv_lora_rank=6, qk_nope_head_size=4, qk_rope_head_size=2,
                                           v_head_size=4, absorb=True)
        _, cache = mla(t(d2l, 3, 4, 16), training=False)
        Y, cache = mla(t(d2l, 3, 1, 16), cache=cache, training=False)
        assert [tuple(x.shape) for x in cache] == [(3, 5, 6), (3, 5, 2)]
        assert tuple(Y.shape) == (3, 1, 16)
        assert tuple(mla.attention_weights.shape) == (3, heads, 1, 5)


def test_parameter_names_and_shapes(d2l):
    args = {"kv_lora_rank": 4, "qk_nope_head_size": 3, "qk_rope_head_size": 2, "v_head_size": 5}
    dense = d2l.get_params(d2l.MultiHeadLatentAttention(8, 2, **args))
    low_rank = d2l.get_params(d2l.MultiHeadLatentAttention(8, 2, q_lora_rank=6, **args))
    shared = {"W_dkv": (8, 4), "kv_norm.gamma": (4,), "W_kr": (8, 2), "W_uk": (4, 6), "W_uv": (4, 10),
              "W_o": (10, 8)}
    assert {n: tuple(p.shape) for n, p in dense.items()} == {"W_q": (8, 10), **shared}
    assert {n: tuple(p.shape) for n, p in low_rank.items()} == {
        "W_dq": (8, 6), "q_norm.gamma": (6,), "W_uq": (6, 10), **shared}


MLA = {"kv_lora_rank": 4, "qk_nope_head_size": 3, "qk_rope_head_size": 2, "v_head_size": 3}


def _mla(d2l, **changes):
    return d2l.MultiHeadLatentAttention(8, 2, **{**MLA, **changes})


BAD_INPUT = {
    "odd rotary size": (lambda d2l: _mla(d2l, qk_rope_head_size=3), ValueError,
                        r"qk_rope_head_size must be even \(rotary encoding rotates pairs of features\), got 3"),
    "kv rank above the hidden size": (
        lambda d2l: _mla(d2l, kv_lora_rank=9), ValueError,
        r"kv_lora_rank must be at most min\(num_hiddens, num_heads \* \(qk_nope_head_size \+ v_head_size\)\) = 8 "
        r"\(the rank of a low-rank factor of that map\), got 9"),
    "kv rank above the keys and values": (
        lambda d2l: d2l.MultiHeadLatentAttention(32, 2, kv_lora_rank=9, qk_nope_head_size=2, qk_rope_head_size=2,
                                                 v_head_size=2), ValueError,
        r"kv_lora_rank must be at most .* = 8 .*, got 9"),
    "q rank that does not fit": (
        lambda d2l: _mla(d2l, q_lora_rank=11), ValueError,
        r"q_lora_rank must be at most min\(num_hiddens, num_heads \* \(qk_nope_head_size \+ qk_rope_head_size\)\) "
        r"= 8 \(the rank of a low-rank factor of that map\), got 11"),
    "zero rank": (lambda d2l: _mla(d2l, kv_lora_rank=0), ValueError, "kv_lora_rank must be a positive integer"),
    "wrong features": (lambda d2l: _mla(d2l)(t(d2l, 2, 3, 7)), ValueError,
                       r"X must have shape \(batch, steps, num_hiddens=8\), got \(2, 3, 7\)"),
    "a CausalSelfAttention cache": (
        lambda d2l: _mla(d2l)(t(d2l, 2, 1, 8), cache=d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 3, 8))[1]), ValueError,
        r"cache must hold latents and rotary keys of shapes \(2, t, 4\) and \(2, t, 2\), got \(2, 2, 3, 4\) and "
        r"\(2, 2, 3, 4\); was it made by a layer of another shape\?"),
    "not a pair": (lambda d2l: _mla(d2l)(t(d2l, 2, 1, 8), cache=[t(d2l, 2, 3, 4)]), ValueError,
                   r"cache must be None or a tuple \(latents, rotary keys\) of shapes \(2, t, 4\) and \(2, t, 2\)"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)

test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused = dropout_tests("latent")
