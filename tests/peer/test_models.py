"""Hugging Face's whole decoder-only models against TransformerLM, with the same weights: the NumPy
reference (float64) and the PyTorch backend (float32). LlamaForCausalLM (RMSNorm eps 1e-5, tied and
untied heads), Qwen2ForCausalLM (biases on W_q, W_k, W_v), MistralForCausalLM (every layer a sliding
window, generation past it with the rolling cache): logits to 1e-4 and the greedy tokens equal.

The weights are drawn so that what is compared shows: the embedding small (RMS 0.01), where an eps
of 1e-5 against 1e-6 changes the first norm by 5%; gains near 1 and dense maps at the harness's
scale, where HF's std 0.02 would make every option look alike.
"""

import math

import numpy as np
import pytest
import torch
import transformers

from d2lattn import numpy as reference
from d2lattn import torch as ours
from tests.peer import support

pytestmark = pytest.mark.needs("peer")
SIZES = {"vocab_size": 13, "num_hiddens": 16, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 24,
         "num_kv_heads": 2}
HF_SIZES = {"vocab_size": 13, "hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 24, "num_key_value_heads": 2, "head_dim": 4}
TOKENS = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]])  # (2, 10)
FFN = {"W_gate": "gate_proj", "W_up": "up_proj", "W_down": "down_proj"}


def draw(model, seed):
    """Canonical parameters for a reference TransformerLM: embedding N(0, 0.01^2), gains 1 + U(-0.5, 0.5),
    dense maps (and biases) uniform in +-2/sqrt(fan_in)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in sorted(reference.get_params(model).items()):
        if name == "embedding":
            params[name] = 0.01 * rng.normal(size=p.shape)
        elif name.endswith("gamma"):
            params[name] = 1 + rng.uniform(-0.5, 0.5, p.shape)
        else:
            params[name] = 2 * rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0])
    return params


def hf_state(params, num_layers):
    """HF's state dict of a *ForCausalLM from canonical parameters (nn.Linear weights are (out, in))."""
    state = {"model.embed_tokens.weight": params["embedding"], "model.norm.weight": params["norm.gamma"],
             "lm_head.weight": params["W_out"].T if "W_out" in params else params["embedding"]}
    for i in range(num_layers):
        block, layer = f"blocks.{i}.", f"model.layers.{i}."
        state[layer + "input_layernorm.weight"] = params[block + "norm1.gamma"]
        state[layer + "post_attention_layernorm.weight"] = params[block + "norm2.gamma"]
        state.update({f"{layer}mlp.{hf}.weight": params[f"{block}ffn.{name}"].T for name, hf in FFN.items()})
        attention = {n.removeprefix(block + "attention."): p for n, p in params.items()
                     if n.startswith(block + "attention.")}
        state.update({layer + "self_attn." + n: p for n, p in support.attention_state(attention).items()})
    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in state.items()}


def build(config_name, seed=0, hf_fields=None, **options):
    """(HF model in float64, the reference's TransformerLM, PyTorch's), the same weights in all three."""
    cfg = support.config(config_name, **HF_SIZES, **(hf_fields or {}))
    hf = getattr(transformers, config_name.replace("Config", "ForCausalLM"))(cfg).double().eval()
    ref, mine = reference.TransformerLM(**SIZES, **options), ours.TransformerLM(**SIZES, **options).eval()
    params = draw(ref, seed)
    reference.set_params(ref, params)
    ours.set_params(mine, params)
    missing, unexpected = hf.load_state_dict(hf_state(params, SIZES["num_layers"]), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return hf, ref, mine


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.as_tensor(tokens)).logits.numpy()                # (b, T, vocab)


def compare_logits(hf, ref, mine, tokens=TOKENS):
    """The largest differences of HF's logits from the reference's and PyTorch's, each within 1e-4."""
    theirs = hf_logits(hf, tokens)
    with torch.no_grad():
        got = mine(torch.as_tensor(tokens))[0].numpy()
    diffs = support.largest(theirs, ref(tokens)[0]), support.largest(theirs, got)
    print(f"{type(hf).__name__}: reference {diffs[0]:.2e}, torch {diffs[1]:.2e}")
    assert max(diffs) <= support.TOLERANCE, diffs
    assert np.abs(theirs).max() > 0.1, "logits this small would tell little"
    return theirs


def hf_greedy(hf, prompt, num_tokens):
    with torch.no_grad():
        return hf.generate(torch.as_tensor(prompt), max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                           do_sample=False, pad_token_id=0, eos_token_id=None).numpy()


@pytest.mark.parametrize("tied", [False, True])
def test_llama_with_its_norm_eps_and_either_head(tied):
    hf, ref, mine = build("LlamaConfig", hf_fields={"rms_norm_eps": 1e-5, "tie_word_embeddings": tied},
                          norm_eps=1e-5, tie_embeddings=tied)
    theirs = compare_logits(hf, ref, mine)
    assert ("W_out" in ours.get_params(mine)) is not tied
    other = reference.TransformerLM(**SIZES, tie_embeddings=tied)                  # the default eps, 1e-6
    reference.set_params(other, reference.get_params(ref))
    assert support.largest(theirs, other(TOKENS)[0]) > 1e-3, "the weights should tell 1e-5 from 1e-6"
    prompt = TOKENS[:, :4]
    np.testing.assert_array_equal(ours.generate(mine, prompt, 8), hf_greedy(hf, prompt, 8))


def test_qwen2_has_biases_on_the_query_key_and_value_maps():
    hf, ref, mine = build("Qwen2Config", seed=1, hf_fields={"rms_norm_eps": 1e-6}, attention_bias=True)
    names = ours.get_params(mine)
    assert {"blocks.0.attention.b_q", "blocks.0.attention.b_k", "blocks.0.attention.b_v"} <= set(names)
    assert "blocks.0.attention.b_o" not in names
    compare_logits(hf, ref, mine)
    prompt = TOKENS[:, :4]
    np.testing.assert_array_equal(ours.generate(mine, prompt, 8), hf_greedy(hf, prompt, 8))


def test_mistral_slides_its_window_and_generates_past_it_with_the_rolling_cache():
    """A window of 3 in every layer; 16 new tokens after a prompt of 4, far past the window: the rolling
    cache (2 slots per layer) gives HF's greedy tokens, the reference's and the cache-less run's."""
    hf, ref, mine = build("MistralConfig", seed=2, hf_fields={"sliding_window": 3, "rms_norm_eps": 1e-5},
                          window=3, norm_eps=1e-5)
    compare_logits(hf, ref, mine)
    prompt = TOKENS[:, :4]
    tokens = ours.generate(mine, prompt, 16)
    np.testing.assert_array_equal(tokens, hf_greedy(hf, prompt, 16))
    np.testing.assert_array_equal(tokens, reference.generate(ref, prompt, 16))
    np.testing.assert_array_equal(tokens, ours.generate(mine, prompt, 16, use_cache=False))
    assert len(set(tokens[:, 4:].ravel().tolist())) > 2, "a constant continuation would test little"
    with torch.no_grad():
        _, cache = mine(torch.as_tensor(tokens))
    assert all(tuple(k.shape) == (2, 2, 2, 4) and int(p) == tokens.shape[1] for k, _, p in cache)
