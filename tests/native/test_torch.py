"""PyTorch's own attention against ours, with the same weights.

nn.MultiheadAttention's masks say True = ignore; SDPA's boolean mask and ours
say True = attend. Lengths here are >= 1: a query with nothing to attend to
is ours to define (zeros), and the harness checks it against the reference.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import numpy as reference
from d2lattn import torch as d2l
from tests import native
from tests.native.peers_torch import (
    native_decoder_layer,
    native_encoder_layer,
    native_gqa,
    native_mha,
    native_vit_block,
)
from tests.native.weights import mha_weights, random_gqa_weights
from tests.support import random_params

B, Q, K, H, HEADS = 3, 5, 6, 16, 4


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masking", ["padding", "causal"])
def test_multihead_matches_nn_multiheadattention(bias, masking):
    rng = np.random.default_rng(0)
    params = mha_weights(bias, rng, H)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=bias).eval()
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    q, k, v = (torch.from_numpy(rng.normal(size=(B, n, H)).astype(np.float32)) for n in (Q, K, K))  # distinct
    if masking == "padding":
        lens = torch.tensor([1, 4, 6])
        out = ours(q, k, v, lens)
        want, weights = native(q, k, v, key_padding_mask=torch.arange(K) >= lens[:, None],
                               average_attn_weights=False)
    else:
        causal = d2l.causal_mask(Q, K)
        out = ours(q, k, v, mask=causal)
        want, weights = native(q, k, v, attn_mask=~causal, average_attn_weights=False)
    np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.attention_weights.detach().numpy(), weights.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("masking", ["padding", "causal", "both"])
def test_dot_product_weights_match_sdpa(masking):
    """Our explicitly computed weights, applied to V, give SDPA's output."""
    rng = np.random.default_rng(1)
    q, k, v = (torch.from_numpy(rng.normal(size=(B, n, 8)).astype(np.float32)) for n in (Q, K, K))
    lens = torch.tensor([2, 6, 3]) if masking != "causal" else None
    mask = d2l.causal_mask(Q, K) if masking != "padding" else None
    keep = torch.ones(B, Q, K, dtype=torch.bool)
    if lens is not None:
        keep &= (torch.arange(K) < lens[:, None])[:, None, :]
    if mask is not None:
        keep &= mask
    attention = d2l.DotProductAttention()
    attention(q, k, v, lens, mask=mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    np.testing.assert_allclose((attention.attention_weights @ v).numpy(), want.numpy(), atol=1e-5)


def test_masked_softmax_matches_softmax_on_kept_positions():
    X = torch.from_numpy(np.random.default_rng(2).normal(size=(B, Q, K)).astype(np.float32))
    lens = torch.tensor([3, 1, 6])
    weights = d2l.masked_softmax(X, lens)
    for i, n in enumerate(lens.tolist()):
        np.testing.assert_allclose(weights[i, :, :n].numpy(), torch.softmax(X[i, :, :n], -1).numpy(), atol=1e-6)
        assert torch.all(weights[i, :, n:] == 0)


def test_layer_norm_matches_f_layer_norm():
    rng = np.random.default_rng(3)
    X = torch.from_numpy(rng.normal(size=(B, Q, H)).astype(np.float32) * 3 + 1)
    gamma, beta = rng.normal(size=H).astype(np.float32), rng.normal(size=H).astype(np.float32)
    ours = d2l.LayerNorm(H)
    d2l.set_params(ours, {"gamma": gamma, "beta": beta})
    want = F.layer_norm(X, (H,), torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5)
    np.testing.assert_allclose(ours(X).detach().numpy(), want.numpy(), atol=1e-5)


# --- modern attention ------------------------------------------------------------------
# Our DotProductAttention computes its output with F.scaled_dot_product_attention itself, so
# where SDPA would only be compared with itself, the check is explicit float64 math.


def _softmax64(scores, keep):
    """float64 softmax over the kept positions; a row with none kept is zeros."""
    top = np.where(keep, scores, -np.inf).max(-1, keepdims=True)
    e = np.where(keep, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)
    total = e.sum(-1, keepdims=True)
    return e / np.where(total > 0, total, 1)


def _float64_gqa_weights(params, q, kv, heads, kv_heads, keep, bias=0.0):
    """(b, heads, q, k) from the canonical weights in float64: query head h reads key head h // group."""
    W = {n: w.astype(np.float64) for n, w in params.items()}
    Q = (q.double().numpy() @ W["W_q"]).reshape(len(q), q.shape[1], heads, -1)      # (b, q, heads, dh)
    Km = (kv.double().numpy() @ W["W_k"]).reshape(len(kv), kv.shape[1], kv_heads, -1)  # (b, k, kv_heads, dh)
    group = heads // kv_heads
    scores = np.stack([Q[:, :, h] @ Km[:, :, h // group].transpose(0, 2, 1) for h in range(heads)], 1)
    return _softmax64(scores / np.sqrt(Q.shape[-1]) + bias, keep)                    # (b, heads, q, k)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_query_attention_matches_sdpa_enable_gqa(kv_heads):
    rng = np.random.default_rng(4)
    params = random_gqa_weights(rng, H, HEADS, kv_heads)
    ours = d2l.MultiHeadAttention(H, HEADS, num_kv_heads=kv_heads).eval()
    d2l.set_params(ours, params)
    q = torch.from_numpy(rng.normal(size=(B, Q, H)).astype(np.float32))
    kv = torch.from_numpy(rng.normal(size=(B, K, H)).astype(np.float32))
    lens = torch.tensor([1, 4, 6])
    keep = (torch.arange(K) < lens[:, None])[:, None, None, :]                 # (b, 1, 1, k)
    want = native_gqa(params, HEADS, kv_heads)(q, kv, kv, attn_mask=keep)
    np.testing.assert_allclose(ours(q, kv, kv, lens).detach().numpy(), want.numpy(), atol=1e-5)
    weights = _float64_gqa_weights(params, q, kv, HEADS, kv_heads, keep.numpy())
    np.testing.assert_allclose(ours.attention_weights.detach().numpy(), weights, atol=1e-6)


def test_alibi_score_bias_in_multihead_matches_sdpa_float_mask():
    """An ALiBi bias (heads, q, k) with a causal mask, through SDPA's float attn_mask (bias, -inf where masked)."""
    rng = np.random.default_rng(5)
    params = random_gqa_weights(rng, H, HEADS, 2)
    ours = d2l.MultiHeadAttention(H, HEADS, num_kv_heads=2).eval()
    d2l.set_params(ours, params)
    x = torch.from_numpy(rng.normal(size=(B, K, H)).astype(np.float32))
    bias, causal = d2l.alibi_bias(HEADS, K), d2l.causal_mask(K)
    attn_mask = bias.masked_fill(~causal, float("-inf"))                         # (heads, k, k)
    want = native_gqa(params, HEADS, 2)(x, x, x, attn_mask=attn_mask)
    np.testing.assert_allclose(ours(x, x, x, mask=causal, score_bias=bias).detach().numpy(), want.numpy(), atol=1e-5)
    weights = _float64_gqa_weights(params, x, x, HEADS, 2, causal.numpy(), bias.double().numpy())
    np.testing.assert_allclose(ours.attention_weights.detach().numpy(), weights, atol=1e-6)


def test_score_bias_with_masks_matches_float64_softmax():
    """Bias added before masking: masked positions get weight exactly 0, an empty row zeros,
    and .attention_weights include the bias."""
    rng = np.random.default_rng(6)
    q, k, v = (rng.normal(size=(B, n, 8)) for n in (Q, K, K))
    bias = rng.normal(size=(B, Q, K)) * 3
    lens, causal = np.array([0, 4, 6]), d2l.causal_mask(Q, K, offset=1)
    keep = (np.arange(K) < lens[:, None, None]) & causal.numpy()                  # (b, q, k); batch 0 is empty
    weights = _softmax64(q @ k.transpose(0, 2, 1) / np.sqrt(8) + bias, keep)
    attention = d2l.DotProductAttention()
    out = attention(*(torch.from_numpy(a.astype(np.float32)) for a in (q, k, v)), torch.from_numpy(lens),
                    mask=causal, score_bias=torch.from_numpy(bias.astype(np.float32)))
    np.testing.assert_allclose(out.numpy(), weights @ v, atol=1e-5)
    np.testing.assert_allclose(attention.attention_weights.detach().numpy(), weights, atol=1e-6)
    assert torch.all(attention.attention_weights[torch.from_numpy(~keep)] == 0) and torch.all(out[0] == 0)


@pytest.mark.parametrize("eps, scale", [(1e-6, 1.0), (1e-6, 1e-3), (0.1, 1.0)])
def test_rms_norm_matches_nn_rmsnorm(eps, scale):
    """Small inputs (scale 1e-3: mean square ~ 1e-6) make the eps count."""
    rng = np.random.default_rng(7)
    X = torch.from_numpy(rng.normal(size=(B, Q, H)).astype(np.float32) * scale)
    gamma = rng.normal(size=H).astype(np.float32)
    ours = d2l.RMSNorm(H) if eps == 1e-6 else d2l.RMSNorm(H, eps=eps)               # 1e-6: the default
    d2l.set_params(ours, {"gamma": gamma})
    native = nn.RMSNorm(H, eps=eps)
    with torch.no_grad():
        native.weight.copy_(torch.from_numpy(gamma))
    np.testing.assert_allclose(ours(X).detach().numpy(), native(X).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_causal_self_attention_matches_sdpa_is_causal():
    """Without rotary positions or a window: SDPA(is_causal=True, enable_gqa=True) between the same
    projections; with a window, explicit float64 weights."""
    rng = np.random.default_rng(8)
    params = random_gqa_weights(rng, H, HEADS, 2)
    X = torch.from_numpy(rng.normal(size=(B, K, H)).astype(np.float32))
    ours = d2l.CausalSelfAttention(H, HEADS, num_kv_heads=2, rope_base=None).eval()
    d2l.set_params(ours, params)
    Y, (keys, values) = ours(X)
    np.testing.assert_allclose(Y.detach().numpy(), native_gqa(params, HEADS, 2)(X, X, X, attn_mask=torch.ones(
        K, K, dtype=torch.bool).tril()).numpy(), atol=1e-5)
    assert keys.shape == values.shape == (B, 2, K, H // HEADS)
    windowed = d2l.CausalSelfAttention(H, HEADS, num_kv_heads=2, window=2, rope_base=None).eval()
    d2l.set_params(windowed, params)
    windowed(X)
    band = np.tril(np.ones((K, K), bool)) & ~np.tril(np.ones((K, K), bool), -2)   # itself and the one before
    np.testing.assert_allclose(windowed.attention_weights.detach().numpy(),
                               _float64_gqa_weights(params, X, X, HEADS, 2, band), atol=1e-6)


def test_sdpa_and_ours_match_float64_math_with_distinct_keys_and_values():
    """Ours is computed by SDPA, so it is not compared with SDPA alone: both with the formula."""
    q, k, v, lens, causal, keep, want = (torch.from_numpy(x) for x in native.float64_case())
    out = d2l.DotProductAttention().eval()(q, k, v, lens, mask=causal)
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(F.scaled_dot_product_attention(q, k, v, attn_mask=keep).numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("mods", ["causal", "window-softcap", "prefix-alibi"])
def test_flex_attention_matches_torch_flex_attention(mods):
    """flex_attention against PyTorch's own torch.nn.attention.flex_attention (run eagerly on the CPU),
    the same mods written for each, and the tiles each block mask counts. The forward only: PyTorch
    2.13's FlexAttention has no backward on the CPU (NotImplementedError); our gradients are held
    to dense attention's in tests/test_flex.py."""
    from torch.nn.attention import flex_attention as native_flex

    heads, T, block = 2, 256, 128
    slopes = d2l.alibi_slopes(heads)
    theirs = {"causal": (lambda b, h, q, kv: q >= kv, None),
              "window-softcap": (lambda b, h, q, kv: (q >= kv) & (q - kv < 100),
                                 lambda s, b, h, q, kv: 3.0 * torch.tanh(s / 3.0)),
              "prefix-alibi": (lambda b, h, q, kv: (kv < 40) | (q >= kv),
                               lambda s, b, h, q, kv: s - slopes[h] * (q - kv).abs())}[mods]
    ours = {"causal": (d2l.causal_mod(), None), "window-softcap": (d2l.window_mod(100), d2l.softcap_mod(3.0)),
            "prefix-alibi": (d2l.prefix_lm_mod(40), d2l.alibi_mod(heads))}[mods]
    rng = np.random.default_rng(0)
    xs = [torch.tensor(rng.normal(size=(1, heads, T, 16)), dtype=torch.float32) for _ in range(3)]
    native_mask = native_flex.create_block_mask(theirs[0], None, None, T, T, device="cpu", BLOCK_SIZE=block)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that it runs unfused, eagerly: it does, on purpose
        want = native_flex.flex_attention(*xs, score_mod=theirs[1], block_mask=native_mask)
    got = d2l.flex_attention(*xs, mask_mod=ours[0], score_mod=ours[1], block_size=block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    kinds = d2l.block_mask(ours[0], T, T, block).kinds                   # partial and full tiles per query row
    np.testing.assert_array_equal((kinds == 1).sum(1), native_mask.kv_num_blocks[0, 0].numpy())
    np.testing.assert_array_equal((kinds == 2).sum(1), native_mask.full_kv_num_blocks[0, 0].numpy())
def test_soft_capping_and_sinks_match_flex_attention():
    """flex_attention with a score_mod that caps the scores and then masks them (Gemma 2's order), and
    a sink from its log-sum-exp: attention with one more column s is the output times
    sigmoid(lse - s). SDPA takes neither a cap nor a sink; flex_attention takes the cap, not the sink."""
    from torch.nn.attention.flex_attention import flex_attention

    rng = np.random.default_rng(9)
    q, k, v = (torch.from_numpy(rng.normal(size=(B, 2, n, 8)).astype(np.float32)) for n in (Q, K, K))
    sinks, cap = torch.from_numpy(rng.normal(size=(2, 1)).astype(np.float32)), 0.8   # (heads, 1): every row

    def capped(score, b, h, i, j):
        return torch.where(j <= i + K - Q, cap * torch.tanh(score / cap), -math.inf)   # lower-right causal

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                  # eager flex_attention warns: not compiled
        out, lse = flex_attention(q * 3, k, v, score_mod=capped, return_lse=True)   # (b, heads, q, dv), (b, heads, q)
    native = out * torch.sigmoid(lse - sinks).unsqueeze(-1)
    keep = torch.ones(Q, K, dtype=torch.bool).tril(K - Q)
    ours = d2l.DotProductAttention()(q * 3, k, v, mask=keep, logit_cap=cap, sinks=sinks)
    np.testing.assert_allclose(ours.numpy(), native.numpy(), atol=1e-5)


# --- the Transformer's blocks against nn.TransformerEncoderLayer / nn.TransformerDecoderLayer ---------
# Post-norm (norm_first=False), ReLU, batch_first=True, no dropout, biases everywhere (PyTorch's layers
# always have them): the canonical weights of our block loaded into PyTorch's.


def _block_weights(block, seed):
    params = {n: p.astype(np.float32) for n, p in random_params(block, np.random.default_rng(seed)).items()}
    params.update({n: (1 + 0.3 * np.random.default_rng(seed).normal(size=p.shape)).astype(np.float32)
                   for n, p in params.items() if n.endswith("gamma")})      # not ones: a swapped norm shows
    return params


def test_encoder_block_matches_nn_transformerencoderlayer():
    params = _block_weights(reference.TransformerEncoderBlock(H, 24, HEADS, bias=True), 0)
    ours = d2l.TransformerEncoderBlock(H, 24, HEADS, bias=True).eval()
    d2l.set_params(ours, params)
    native_layer = native_encoder_layer(params, H, HEADS, 24)
    X = torch.from_numpy(np.random.default_rng(1).normal(size=(B, K, H)).astype(np.float32))
    lens = torch.tensor([2, 6, 4])
    with torch.no_grad():
        want = native_layer(X, src_key_padding_mask=torch.arange(K) >= lens[:, None])   # True: padding
        got = ours(X, lens)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_decoder_block_matches_nn_transformerdecoderlayer_whole_and_step_by_step():
    params = _block_weights(reference.TransformerDecoderBlock(H, 24, HEADS, bias=True), 2)
    ours = d2l.TransformerDecoderBlock(H, 24, HEADS, bias=True).eval()
    d2l.set_params(ours, params)
    native_layer = native_decoder_layer(params, H, HEADS, 24)
    rng = np.random.default_rng(3)
    X, memory = (torch.from_numpy(rng.normal(size=(B, n, H)).astype(np.float32)) for n in (Q, K))
    lens = torch.tensor([1, 6, 3])
    with torch.no_grad():
        want = native_layer(X, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(Q), tgt_is_causal=True,
                            memory_key_padding_mask=torch.arange(K) >= lens[:, None])
        np.testing.assert_allclose(ours(X, memory, lens).numpy(), want.numpy(), atol=1e-5)
        cache, steps = None, []
        for t in range(Q):
            y, cache = ours.step(X[:, t:t + 1], memory, lens, cache)
            steps.append(y)
    np.testing.assert_allclose(torch.cat(steps, 1).numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_vit_block_matches_pre_norm_transformer_encoder_layer(bias):
    """nn.TransformerEncoderLayer(norm_first=True, activation="gelu") is a pre-norm block with the
    exact GELU: ours with the same weights gives its outputs, padded keys masked alike. (Flax, Keras
    and Gluon ship no such block: there the harness's reference is the only comparison.) Without
    attention biases, nn.MultiheadAttention's are zero."""
    rng = np.random.default_rng(2)
    ours = d2l.ViTBlock(H, 24, HEADS, bias=bias).eval()
    params = {n: (rng.uniform(-1, 1, p.shape) / np.sqrt(p.shape[0])).astype(np.float32)
              for n, p in d2l.get_params(ours).items()}
    d2l.set_params(ours, params)
    full = {**params, **{f"attention.b_{x}": np.zeros(H, np.float32) for x in "qkvo" if not bias}}
    native = native_vit_block(full, H, HEADS, 24)
    X = torch.from_numpy(rng.normal(size=(B, K, H)).astype(np.float32))
    lens = torch.tensor([2, 6, 4])
    with torch.no_grad():
        np.testing.assert_allclose(ours(X).numpy(), native(X).numpy(), atol=1e-5)
        padded = native(X, src_key_padding_mask=torch.arange(K) >= lens[:, None])        # True = ignore
        np.testing.assert_allclose(ours(X, lens).numpy(), padded.numpy(), atol=1e-5)


def test_small_models_run_on_one_thread_and_the_count_comes_back():
    """generate, greedy_decode, train_lm and train_seq2seq run a small model on one intra-op thread
    (d2lattn/torch/ops.py) and give PyTorch its thread count back afterwards, after an error too."""
    outer = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever the suite runs on (one thread per worker): two to come back to
    before, seen = 2, []
    lm = d2l.TransformerLM(7, 8, 2, 1, 12)
    lm.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    d2l.generate(lm, np.zeros((1, 2), np.int32), 2)
    tokens = np.zeros((2, 4), np.int32)
    d2l.train_lm(lm, [(tokens[:, :-1], tokens[:, 1:], np.array([3, 3], np.int32))], epochs=1, progress=False)
    seq2seq = d2l.Seq2Seq(5, 6, 3, 4)
    seq2seq.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    seq2seq.decoder.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    d2l.greedy_decode(seq2seq, [1, 2, 3], 3, 1, 2, 2)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="gave no batch"):
        d2l.train_seq2seq(seq2seq, [], epochs=1, progress=False)
    assert torch.get_num_threads() == before
    torch.set_num_threads(outer)
