"""PyTorch's own attention holding d2lattn's canonical weights (tests/native/weights.py), for
tests/native/test_torch.py and benchmarks/bench_torch.py."""

import torch
from torch import nn
from torch.nn import functional as F


def native_mha(params, hidden, heads):
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


def native_gqa(params, heads, kv_heads):
    """PyTorch's own grouped-query path between the canonical projections:
    F.scaled_dot_product_attention(..., enable_gqa=True) on (b, kv_heads, k, dh) keys and values."""
    t = {name: torch.from_numpy(value) for name, value in params.items()}

    def attend(queries, keys, values, attn_mask=None):
        b, n, m = queries.shape[0], queries.shape[1], keys.shape[1]
        q = (queries @ t["W_q"]).reshape(b, n, heads, -1).transpose(1, 2)      # (b, heads, q, dh)
        k = (keys @ t["W_k"]).reshape(b, m, kv_heads, -1).transpose(1, 2)      # (b, kv_heads, k, dh)
        v = (values @ t["W_v"]).reshape(b, m, kv_heads, -1).transpose(1, 2)    # (b, kv_heads, k, dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)  # (b, heads, q, dh)
        return out.transpose(1, 2).reshape(b, n, -1) @ t["W_o"]                  # (b, q, hidden)
    return attend


def _load_layer(layer, params, attentions, norms):
    """Copy canonical block weights into an nn.TransformerEncoderLayer or nn.TransformerDecoderLayer:
    `attentions` {our child: its nn.MultiheadAttention}, `norms` {our AddNorm: its nn.LayerNorm}."""
    t = {name: torch.from_numpy(value) for name, value in params.items()}
    with torch.no_grad():
        for ours, mha in attentions.items():
            mha.in_proj_weight.copy_(torch.cat([t[f"{ours}.W_{x}"].T for x in "qkv"]))
            mha.in_proj_bias.copy_(torch.cat([t[f"{ours}.b_{x}"] for x in "qkv"]))
            mha.out_proj.weight.copy_(t[f"{ours}.W_o"].T)
            mha.out_proj.bias.copy_(t[f"{ours}.b_o"])
        for ours, norm in norms.items():
            norm.weight.copy_(t[f"{ours}.norm.gamma"])
            norm.bias.copy_(t[f"{ours}.norm.beta"])
        for i, linear in ((1, layer.linear1), (2, layer.linear2)):
            linear.weight.copy_(t[f"ffn.W_{i}"].T)
            linear.bias.copy_(t[f"ffn.b_{i}"])
    return layer.eval()


def native_encoder_layer(params, hidden, heads, ffn_hidden):
    """nn.TransformerEncoderLayer (post-norm, ReLU, batch first, no dropout) holding a
    TransformerEncoderBlock's canonical weights (with biases)."""
    layer = nn.TransformerEncoderLayer(hidden, heads, ffn_hidden, dropout=0.0, activation="relu", batch_first=True,
                                       norm_first=False)
    return _load_layer(layer, params, {"attention": layer.self_attn},
                       {"addnorm1": layer.norm1, "addnorm2": layer.norm2})


def native_decoder_layer(params, hidden, heads, ffn_hidden):
    """nn.TransformerDecoderLayer (post-norm, ReLU, batch first, no dropout) holding a
    TransformerDecoderBlock's canonical weights (with biases)."""
    layer = nn.TransformerDecoderLayer(hidden, heads, ffn_hidden, dropout=0.0, activation="relu", batch_first=True,
                                       norm_first=False)
    return _load_layer(layer, params, {"attention1": layer.self_attn, "attention2": layer.multihead_attn},
                       {"addnorm1": layer.norm1, "addnorm2": layer.norm2, "addnorm3": layer.norm3})


def native_vit_block(params, hidden, heads, mlp_hidden):
    """nn.TransformerEncoderLayer as a pre-norm ViT block (norm_first, exact GELU, no dropout) holding
    the canonical ViTBlock weights: its self_attn is nn.MultiheadAttention, linear1 and linear2 the MLP."""
    layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=mlp_hidden, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    attention = native_mha({n.removeprefix("attention."): p for n, p in params.items() if n.startswith("attention.")},
                           hidden, heads)
    layer.self_attn.load_state_dict(attention.state_dict())
    t = {name: torch.from_numpy(value) for name, value in params.items()}
    with torch.no_grad():
        for ours, theirs in (("mlp.W_1", layer.linear1), ("mlp.W_2", layer.linear2)):
            theirs.weight.copy_(t[ours].T)
            theirs.bias.copy_(t[ours.replace("W_", "b_")])
        for ours, theirs in (("norm1", layer.norm1), ("norm2", layer.norm2)):
            theirs.weight.copy_(t[f"{ours}.gamma"])
            theirs.bias.copy_(t[f"{ours}.beta"])
    return layer.eval()
