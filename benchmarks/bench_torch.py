"""Our PyTorch attention against PyTorch's own: `python -m benchmarks.bench_torch`.

MultiHeadAttention against nn.MultiheadAttention (same weights; eval, no grad,
key-padding lengths), and DotProductAttention against
F.scaled_dot_product_attention on the same per-head tensors. Grouped-query
MultiHeadAttention (num_kv_heads) against F.scaled_dot_product_attention(enable_gqa=True)
between the same projections. Then generation with and without the K/V cache at
growing contexts, and a checkpoint at SmolLM2-135M's configuration: from_pretrained and
generate against transformers' (benchmarks/checkpoints.py).
"""


import numpy as np
import torch
from torch.nn import functional as F

from benchmarks import cache, checkpoints, common, flex, linear, memory, shared_cpu
from d2lattn import torch as d2l
from tests.native import weights
from tests.native.peers_torch import native_gqa, native_mha


def grouped_query(tokens):
    """Our GQA MultiHeadAttention against SDPA's enable_gqa between the same projections."""
    X, lens = common.inputs(tokens)
    X, lens = torch.from_numpy(X), torch.from_numpy(lens)
    params = weights.random_gqa_weights(np.random.default_rng(3), common.HIDDEN, common.HEADS, common.GQA_KV_HEADS)
    ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, num_kv_heads=common.GQA_KV_HEADS).eval()
    d2l.set_params(ours, params)
    native = native_gqa(params, common.HEADS, common.GQA_KV_HEADS)
    keep = (torch.arange(tokens) < lens[:, None])[:, None, None, :]         # (b, 1, 1, k), True = attend
    np.testing.assert_allclose(ours(X, X, X, lens).numpy(), native(X, X, X, attn_mask=keep).numpy(), atol=1e-4)
    return (f"GQA {common.HEADS} heads / {common.GQA_KV_HEADS} kv, {tokens} tokens vs SDPA enable_gqa",
            *common.compare(lambda: ours(X, X, X, lens), lambda: native(X, X, X, attn_mask=keep)))


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
        native = native_mha(params, common.HIDDEN, common.HEADS)
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
        rows.append(grouped_query(tokens))
    common.report(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"batch {common.BATCH}, hidden {common.HIDDEN}, {common.HEADS} heads", rows)
    common.generation(d2l, "eager")


def blockwise_memory():
    """Blockwise against dense attention: peak memory (fresh processes) and time, one thread each (a Python
    loop of small kernels suffers most from threads that wait on a busy machine), vs SDPA too."""
    torch.set_num_threads(1)
    memory.main(d2l, fused=lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))


def cache_per_token():
    """Cache bytes and time per generated token of MHA, GQA and MLA at 1k and 8k, eager, one thread."""
    torch.set_num_threads(1)
    cache.main(d2l, how="eager, no grad, one thread")


def pretrained():
    """SmolLM2-135M's configuration: from_pretrained and cached greedy generate against transformers', on one
    thread each (the machine's other jobs make a second thread wait; benchmarks/checkpoints.py)."""
    torch.set_num_threads(1)
    checkpoints.against_transformers(d2l)


def linear_forms():
    """Linear attention and the delta rule at T = 4096: chunked against recurrent, eager, no grad, one thread."""
    torch.set_num_threads(1)
    with torch.no_grad():
        linear.main(d2l, how="eager, no grad, one thread")


def flex_masks():
    """flex_attention's skipped tiles (benchmarks/flex.py), gradients on (main turned them off)."""
    with torch.enable_grad():
        flex.main(d2l)


if __name__ == "__main__":
    main()
    cache_per_token()
    pretrained()
    shared_cpu.main()  # training beside a concurrent CPU load, before blockwise_memory sets one thread
    linear_forms()
    blockwise_memory()
    flex_masks()
