"""PyTorch's own attention against ours, with the same weights.

nn.MultiheadAttention's masks say True = ignore; SDPA's boolean mask and ours
say True = attend. Lengths here are >= 1: a query with nothing to attend to
is ours to define (zeros), and the harness checks it against the reference.
"""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmarks.bench_torch import native_mha
from benchmarks.common import mha_weights
from d2lattn import torch as d2l

B, Q, K, H, HEADS = 3, 5, 6, 16, 4


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("masking", ["padding", "causal"])
def test_multihead_matches_nn_multiheadattention(bias, masking):
    rng = np.random.default_rng(0)
    params = mha_weights(bias, rng, H)
    ours = d2l.MultiHeadAttention(H, HEADS, bias=bias).eval()
    d2l.set_params(ours, params)
    native = native_mha(params, hidden=H, heads=HEADS)
    q = torch.from_numpy(rng.normal(size=(B, Q, H)).astype(np.float32))
    kv = torch.from_numpy(rng.normal(size=(B, K, H)).astype(np.float32))
    if masking == "padding":
        lens = torch.tensor([1, 4, 6])
        out = ours(q, kv, kv, lens)
        want, weights = native(q, kv, kv, key_padding_mask=torch.arange(K) >= lens[:, None],
                               average_attn_weights=False)
    else:
        causal = d2l.causal_mask(Q, K)
        out = ours(q, kv, kv, mask=causal)
        want, weights = native(q, kv, kv, attn_mask=~causal, average_attn_weights=False)
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
    out = attention(q, k, v, lens, mask=mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    np.testing.assert_allclose((attention.attention_weights @ v).numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=1e-5)


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
