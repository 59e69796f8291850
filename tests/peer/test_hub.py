"""save_pretrained's directories in transformers, and the hub fixtures against the installed transformers.

A TransformerLM of every family, its weights drawn at the harness's scale, is written by the PyTorch
backend's save_pretrained and opened by AutoModelForCausalLM.from_pretrained: the logits must agree
to 1e-4. Each fixture in tests/fixtures/hub/ is opened by the installed transformers and must still
give the logits stored beside it, so a transformers release that changes a family's behaviour fails
here rather than silently moving the target of tests/test_hub.py.
"""

import numpy as np
import pytest
import torch
import transformers

from d2lattn import torch as ours
from tests.peer import support
from tests.test_hub import FIXTURES, TOLERANCE, expected

pytestmark = pytest.mark.needs("peer")
SIZES = {"vocab_size": 13, "num_hiddens": 16, "num_heads": 4, "num_layers": 3, "ffn_num_hiddens": 24,
         "num_kv_heads": 2, "norm_eps": 1e-5}
FAMILIES = {
    "llama": {"tie_embeddings": True, "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
    "mistral": {"window": 3},
    "qwen2": {"attention_bias": True, "window": [3, 3, None]},
    "qwen3": {"qk_norm": True, "rope_base": 1e6, "head_size": 8},  # heads wider than 16 / 4, Gemma's narrower
    "gemma3_text": {"qk_norm": True, "post_norms": True, "scale_embeddings": True, "ffn_activation": "gelu_tanh",
                    "head_size": 2, "tie_embeddings": True, "window": [3, 3, None], "rope_base": [1e4, 1e4, 1e6],
                    "final_logit_cap": 5.0},
}
TOKENS = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]])  # (2, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_opens_what_save_pretrained_writes(family, tmp_path):
    model = ours.TransformerLM(**SIZES, **FAMILIES[family]).eval()
    reference = support.reference.TransformerLM(**SIZES, **FAMILIES[family])
    ours.set_params(model, support.draw(reference))
    ours.save_pretrained(model, tmp_path, family=family)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(theirs).__name__ == {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                     "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                                     "gemma3_text": "Gemma3ForCausalLM"}[family]
    with torch.no_grad():
        want = theirs(torch.as_tensor(TOKENS)).logits.numpy()
        got = ours.to_numpy(model(ours.tensor(TOKENS))[0])
    assert np.abs(got - want).max() <= TOLERANCE


@pytest.mark.parametrize("name", ["llama2", "llama3", "mistral", "qwen2", "qwen3", "gemma3"])
def test_the_fixtures_match_the_installed_transformers(name):
    e = expected(name)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / name).eval()
    with torch.no_grad():
        logits = theirs(torch.as_tensor(e["tokens"])).logits.numpy()
    assert np.abs(logits - e["logits"]).max() <= 1e-5, (
        f"transformers {transformers.__version__} no longer gives the {name} fixture's logits: "
        "run python -m tests.fixtures.make_hub and check what changed")
