"""Hugging Face's DeepseekV3Attention (multi-head latent attention) against MultiHeadLatentAttention,
with the same weights: the NumPy reference (float64) and the PyTorch backend (float32), naive and
absorbed, to 1e-4.

HF's layout: q_proj (or q_a_proj, q_a_layernorm, q_b_proj) gives each head its qk_nope_head_dim
features then its qk_rope_head_dim ones, as W_q / W_uq do; kv_a_proj_with_mqa is [W_dkv | W_kr];
kv_b_proj gives each head its key features then its value features, which W_uk and W_uv hold
apart. With rope_interleave (DeepSeek's checkpoints) the rotary features pair as (2i, 2i + 1); we
pair split halves (i, i + d/2), so the rotary columns are permuted, evens first, for those configs.
The softmax scale is (qk_nope_head_dim + qk_rope_head_dim) ** -0.5 in both (no YaRN mscale here).
"""

import numpy as np
import pytest
import torch
from transformers.models.deepseek_v3 import modeling_deepseek_v3

from tests.peer import support

pytestmark = pytest.mark.needs("peer")
B, T, H, HEADS, R, DN, DR, DV = 2, 7, 16, 4, 6, 4, 4, 3
SIZES = dict(kv_lora_rank=R, qk_nope_head_size=DN, qk_rope_head_size=DR, v_head_size=DV)


def deepseek_state(params, interleave):
    """DeepseekV3Attention's state dict from canonical MLA parameters (nn.Linear keeps W transposed)."""
    rope = np.r_[0:DR:2, 1:DR:2] if interleave else np.arange(DR)   # HF rotary feature j <- our feature rope[j]
    back = np.argsort(rope)
    per_head = np.concatenate([np.r_[i * (DN + DR):i * (DN + DR) + DN, i * (DN + DR) + DN + back]
                               for i in range(HEADS)])               # our query columns in HF's order
    state = {"kv_a_proj_with_mqa.weight": np.concatenate([params["W_dkv"], params["W_kr"][:, back]], 1).T,
             "kv_a_layernorm.weight": params["kv_norm.gamma"],
             "kv_b_proj.weight": np.concatenate([params["W_uk"].reshape(R, HEADS, DN),
                                                 params["W_uv"].reshape(R, HEADS, DV)], -1).reshape(R, -1).T,
             "o_proj.weight": params["W_o"].T}
    if "W_q" in params:
        state["q_proj.weight"] = params["W_q"][:, per_head].T
    else:
        state.update({"q_a_proj.weight": params["W_dq"].T, "q_a_layernorm.weight": params["q_norm.gamma"],
                      "q_b_proj.weight": params["W_uq"][:, per_head].T})
    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in state.items()}


@pytest.mark.parametrize("interleave", [False, True], ids=["halves", "interleaved"])
@pytest.mark.parametrize("q_lora_rank", [None, 8], ids=["dense-queries", "low-rank-queries"])
def test_deepseek_v3_attention(interleave, q_lora_rank):
    cfg = support.config("DeepseekV3Config", hidden_size=H, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         kv_lora_rank=R, q_lora_rank=q_lora_rank, qk_nope_head_dim=DN, qk_rope_head_dim=DR,
                         v_head_dim=DV, rope_interleave=interleave, rms_norm_eps=1e-6, attention_bias=False)
    X = np.random.default_rng(1).normal(size=(B, T, H))
    diffs = {}
    for absorb in (False, True):
        ref, mine, params = support.pair("MultiHeadLatentAttention", H, HEADS, q_lora_rank=q_lora_rank, absorb=absorb,
                                         **SIZES)
        hf = support.load(support.module(modeling_deepseek_v3.DeepseekV3Attention, cfg, 0),
                          deepseek_state(params, interleave))
        rope = support.rotary(support.module(modeling_deepseek_v3.DeepseekV3RotaryEmbedding, cfg), T)
        theirs = support.run(hf, X, rope, support.causal_mask(cfg, T, b=B))
        with torch.no_grad():
            got = mine(torch.from_numpy(X.astype(np.float32)))[0].numpy()
        diffs[absorb] = support.largest(theirs, ref(X)[0]), support.largest(theirs, got)
    print(f"DeepseekV3Attention (reference, torch) naive {diffs[False]}, absorbed {diffs[True]}")
    assert max(max(d) for d in diffs.values()) <= support.TOLERANCE, diffs
