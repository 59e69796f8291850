"""Our PyTorch attention against PyTorch's own: `python -m benchmarks.bench_torch`.

MultiHeadAttention against nn.MultiheadAttention (same weights; eval, no grad,
key-padding lengths), and DotProductAttention against
F.scaled_dot_product_attention on the same per-head tensors.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import common
from d2lattn import torch as d2l


def native_mha(params, hidden=common.HIDDEN, heads=common.HEADS):
    """nn.MultiheadAttention holding the canonical weights (it stores W as (out, in))."""
    mha = nn.MultiheadAttention(hidden, heads, bias="b_q" in params, batch_first=True)
    t = {name: torch.from_numpy(value) for name, value in params.items()}
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([t["W_q"].T, t["W_k"].T, t["W_v"].T]))
        mha.out_proj.weight.copy_(t["W_o"].T)
        if "b_q" in t:
            mha.in_proj_bias.copy_(torch.cat([t["b_q"], t["b_k"], t["b_v"]]))
            mha.out_proj.bias.copy_(t["b_o"])
    return mha.eval()


def main():
    torch.set_grad_enabled(False)
    rows = []
    for tokens in common.TOKENS:
        X, lens = common.inputs(tokens)
        X, lens = torch.from_numpy(X), torch.from_numpy(lens)
        padding = torch.arange(tokens) >= lens[:, None]                      # True = ignore (PyTorch's MHA)
        params = common.mha_weights(bias=True)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True).eval()
        d2l.set_params(ours, params)
        native = native_mha(params)
        expected = native(X, X, X, key_padding_mask=padding, need_weights=False)[0]
        np.testing.assert_allclose(ours(X, X, X, lens).numpy(), expected.numpy(), atol=1e-4)
        for need_weights in (False, True):
            label = f"MHA {tokens} tokens vs need_weights={need_weights}"
            rows.append((label, *common.compare(
                lambda: ours(X, X, X, lens),
                lambda nw=need_weights: native(X, X, X, key_padding_mask=padding, need_weights=nw))))
        rows.append((f"MHA {tokens} tokens, weights read, vs need_weights=True", *common.compare(
            lambda: (ours(X, X, X, lens), ours.attention_weights),
            lambda: native(X, X, X, key_padding_mask=padding, need_weights=True))))
        q = torch.from_numpy(np.random.default_rng(2).normal(
            size=(common.BATCH, common.HEADS, tokens, common.HIDDEN // common.HEADS)).astype(np.float32))
        keep = ~padding[:, None, None, :]                                     # (b, 1, 1, k), True = attend
        attention = d2l.DotProductAttention().eval()
        rows.append((f"DotProductAttention {tokens} tokens vs SDPA", *common.compare(
            lambda: attention(q, q, q, lens), lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=keep))))
    common.report(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"batch {common.BATCH}, hidden {common.HIDDEN}, {common.HEADS} heads", rows)


if __name__ == "__main__":
    main()
