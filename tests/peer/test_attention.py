"""Hugging Face's attention layers of today's open models against CausalSelfAttention, with the
same weights: the NumPy reference (float64) and the PyTorch backend (float32), to 1e-4."""

import numpy as np
import pytest
import torch
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.gpt_oss import modeling_gpt_oss
from transformers.models.llama import modeling_llama
from transformers.models.qwen3 import modeling_qwen3
from transformers.models.qwen3_next import modeling_qwen3_next

from d2lattn import numpy as reference
from d2lattn import torch as ours
from d2lattn.rotary import rope_frequencies
from tests.peer import support

pytestmark = pytest.mark.needs("peer")
B, T, H, HEADS, KV_HEADS, DH = 2, 7, 16, 4, 2, 4
SIZES = dict(hidden_size=H, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=DH)


def compare(hf_attention, ref, mine, position_embeddings, mask):
    """The largest difference of HF's output from the reference's and from PyTorch's."""
    X = np.random.default_rng(1).normal(size=(B, T, H))
    theirs = support.run(hf_attention, X, position_embeddings, mask)
    with torch.no_grad():
        got = mine(torch.from_numpy(X.astype(np.float32)))[0].numpy()
    diffs = support.largest(theirs, ref(X)[0]), support.largest(theirs, got)
    print(f"{type(hf_attention).__name__}: reference {diffs[0]:.2e}, torch {diffs[1]:.2e}")
    assert max(diffs) <= support.TOLERANCE, diffs
    return diffs


def test_qwen3_attention_is_qk_norm_per_head_before_rope():
    cfg = support.config("Qwen3Config", **SIZES, rms_norm_eps=1e-6, attention_bias=False)
    ref, mine, params = support.pair("CausalSelfAttention", H, HEADS, num_kv_heads=KV_HEADS, qk_norm=True)
    hf = support.load(support.module(modeling_qwen3.Qwen3Attention, cfg, 0), support.attention_state(params))
    rope = support.rotary(support.module(modeling_qwen3.Qwen3RotaryEmbedding, cfg), T)
    compare(hf, ref, mine, rope, support.causal_mask(cfg, T))


@pytest.mark.parametrize("head_size", [8, 2])
def test_qwen3_attention_with_heads_wider_or_narrower_than_hidden_over_heads(head_size):
    """head_dim 8 or 2 at hidden 16 and 4 heads (Qwen3-0.6B: 128 at 1024 / 16): W_q (16, 4 * head_size),
    W_o (4 * head_size, 16), the QK-norm's gains and the rotation over head_size, scores / sqrt(head_size)."""
    cfg = support.config("Qwen3Config", **{**SIZES, "head_dim": head_size}, rms_norm_eps=1e-6, attention_bias=False)
    ref, mine, params = support.pair("CausalSelfAttention", H, HEADS, num_kv_heads=KV_HEADS, qk_norm=True,
                                     head_size=head_size)
    hf = support.load(support.module(modeling_qwen3.Qwen3Attention, cfg, 0), support.attention_state(params))
    rope = support.rotary(support.module(modeling_qwen3.Qwen3RotaryEmbedding, cfg), T)
    compare(hf, ref, mine, rope, support.causal_mask(cfg, T))


@pytest.mark.parametrize("window", [3, None])
def test_gemma2_attention_is_soft_capped_before_the_sliding_window(window):
    cfg = support.config("Gemma2Config", **SIZES, query_pre_attn_scalar=DH, attn_logit_softcapping=0.5,
                         sliding_window=window)
    ref, mine, params = support.pair("CausalSelfAttention", H, HEADS, num_kv_heads=KV_HEADS, logit_cap=0.5,
                                     window=window)
    hf = support.load(support.module(modeling_gemma2.Gemma2Attention, cfg, 0), support.attention_state(params))
    rope = support.rotary(support.module(modeling_gemma2.Gemma2RotaryEmbedding, cfg), T)
    compare(hf, ref, mine, rope, support.causal_mask(cfg, T, sliding=window is not None))


GPT_OSS_YARN = {"type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096}


def test_gpt_oss_attention_has_sinks_a_sliding_window_and_yarn():
    cfg = support.config("GptOssConfig", **SIZES, sliding_window=3)      # layer 0 slides; yarn as gpt-oss ships
    scaling = {"type": cfg.rope_parameters["rope_type"], **{k: cfg.rope_parameters[k] for k in GPT_OSS_YARN
                                                            if k != "type"}}
    assert scaling == GPT_OSS_YARN
    ref, mine, params = support.pair("CausalSelfAttention", H, HEADS, num_kv_heads=KV_HEADS, sinks=True, window=3,
                                     bias=True, rope_base=cfg.rope_parameters["rope_theta"], rope_scaling=scaling)
    hf = support.load(support.module(modeling_gpt_oss.GptOssAttention, cfg, 0), support.attention_state(params))
    rope = support.rotary(support.module(modeling_gpt_oss.GptOssRotaryEmbedding, cfg), T)
    compare(hf, ref, mine, rope, support.causal_mask(cfg, T, sliding=True))  # HF's window: the query and 2 before


def test_qwen3_next_attention_gates_each_head_and_rotates_part_of_it():
    cfg = support.config("Qwen3NextConfig", **SIZES, rms_norm_eps=1e-6, attention_bias=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    ref, mine, params = support.pair("CausalSelfAttention", H, HEADS, num_kv_heads=KV_HEADS, qk_norm=True,
                                     output_gate=True, rope_fraction=0.5)
    state = support.attention_state(params, gate_heads=HEADS, norm_offset=1.0)   # its RMSNorm: x (1 + weight)
    hf = support.load(support.module(modeling_qwen3_next.Qwen3NextAttention, cfg, 3), state)
    rope = support.rotary(support.module(modeling_qwen3_next.Qwen3NextRotaryEmbedding, cfg), T)
    compare(hf, ref, mine, rope, support.causal_mask(cfg, T))


SCALINGS = {
    "llama3": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024},
    "yarn": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
    "yarn-beta-untruncated": {"type": "yarn", "factor": 16.0, "beta_fast": 16.0, "beta_slow": 2.0,
                              "original_max_position_embeddings": 512, "truncate": False},
    "yarn-mscale": {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 512,
                    "mscale": 1.0, "mscale_all_dim": 0.5},
    "yarn-attention-factor": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                              "attention_factor": 0.8},
}


@pytest.mark.parametrize("name", SCALINGS)
def test_scaled_rope_matches_llama_rotary_embedding(name):
    """Frequencies, YaRN's attention factor and the rotated features at positions far out."""
    d, base, scaling = 16, 10000.0, SCALINGS[name]
    longest = int(scaling["factor"] * scaling["original_max_position_embeddings"])   # the context it scales to
    cfg = support.config("LlamaConfig", hidden_size=d * 2, num_attention_heads=2, max_position_embeddings=longest,
                         rope_parameters={"rope_type": scaling["type"], "rope_theta": base,
                                          **{k: v for k, v in scaling.items() if k != "type"}})
    hf = support.module(modeling_llama.LlamaRotaryEmbedding, cfg)
    theta, factor = rope_frequencies(d, base, scaling)
    assert support.largest(hf.inv_freq, theta) <= 1e-6 * theta.max() and factor == pytest.approx(hf.attention_scaling)
    X = np.random.default_rng(2).normal(size=(B, 2, T, d))
    offset = 1000                                                        # HF's float32 theta: angles to 1e-4
    cos, sin = hf(torch.zeros(1, T, 1, dtype=torch.float64), torch.arange(offset, offset + T)[None])
    theirs, _ = modeling_llama.apply_rotary_pos_emb(torch.from_numpy(X), torch.from_numpy(X), cos, sin)
    got_ref = reference.RotaryPositionalEncoding(d, base, scaling=scaling)(X, offset=offset)
    got = ours.RotaryPositionalEncoding(d, base, scaling=scaling)(torch.from_numpy(X.astype(np.float32)),
                                                                  offset=offset)
    diffs = support.largest(theirs, got_ref), support.largest(theirs, got)
    print(f"LlamaRotaryEmbedding {name}: reference {diffs[0]:.2e}, torch {diffs[1]:.2e}")
    assert max(diffs) <= support.TOLERANCE, diffs


def test_default_rope_frequencies_are_hf_default():
    cfg = support.config("LlamaConfig", hidden_size=32, num_attention_heads=2)
    hf = support.module(modeling_llama.LlamaRotaryEmbedding, cfg)
    assert support.largest(hf.inv_freq, rope_frequencies(16)[0]) <= 1e-7 and hf.attention_scaling == 1.0
