"""from_pretrained and save_pretrained on the backend under test, over tests/fixtures/hub/.

Each fixture is a tiny model directory that transformers wrote (tests/fixtures/make_hub.py, weights
at the harness's scale) with transformers' own logits for a token batch and its greedy continuation:
loading it must give those logits and tokens, with and without the cache. Writing a model and
reading it back gives the same parameters and arguments, and a directory that is not what it
claims is a ValueError naming the problem. That transformers opens what save_pretrained writes is
tests/peer/test_hub.py (it needs transformers, in the PyTorch environment). Qwen3's fixture has heads
wider than hidden_size / num_attention_heads, Gemma 3's narrower; llama2/ has a tokenizer.json.
"""

import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from d2lattn import hub

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "hub"
FAMILIES = {"llama2": "llama", "llama3": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
            "gemma3": "gemma3_text"}
TOLERANCE = 1e-4  # float32 logits against transformers' float32 logits


def expected(name):
    return np.load(FIXTURES / name / "expected.npz")


@pytest.mark.parametrize("name", FAMILIES)
def test_fixture_logits(d2l, name):
    model, e = d2l.from_pretrained(FIXTURES / name), expected(name)
    logits, _ = model(d2l.tensor(e["tokens"]), training=False)
    assert np.abs(d2l.to_numpy(logits) - e["logits"]).max() <= TOLERANCE


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("name", FAMILIES)
def test_fixture_greedy(d2l, name, use_cache):
    model, e = d2l.from_pretrained(FIXTURES / name), expected(name)
    new = e["greedy"].shape[1] - e["tokens"].shape[1]
    tokens = d2l.generate(model, e["tokens"], new, use_cache=use_cache)
    np.testing.assert_array_equal(np.asarray(tokens), e["greedy"])


@pytest.mark.parametrize("name", FAMILIES)
def test_save_then_load_round_trips(d2l, name, tmp_path):
    model = d2l.from_pretrained(FIXTURES / name)
    d2l.save_pretrained(model, tmp_path, family=FAMILIES[name])
    again = d2l.from_pretrained(tmp_path)
    assert dict(again.config) == dict(model.config)
    before, after = d2l.get_params(model), d2l.get_params(again)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def test_saving_over_the_directory_it_was_loaded_from(d2l, tmp_path):
    """from_pretrained maps the file; another, smaller model written to the same directory leaves the
    loaded one whole (a file rewritten in place under its mapping would change its weights or crash
    the next call that reads them)."""
    directory, e = copy_of("llama2", tmp_path), expected("llama2")
    model = d2l.from_pretrained(directory)
    d2l.save_pretrained(d2l.TransformerLM(16, 8, 2, 1, 12), directory, family="llama")
    logits, _ = model(d2l.tensor(e["tokens"]), training=False)
    assert np.abs(d2l.to_numpy(logits) - e["logits"]).max() <= TOLERANCE


@pytest.mark.parametrize("name, head_size", [("qwen3", 16), ("gemma3", 6), ("llama2", None)])
def test_head_dim_is_head_size(d2l, name, head_size, tmp_path):
    """config.json's head_dim reads as head_size (None where it is hidden_size / num_attention_heads)
    and is written back as head_dim."""
    model = d2l.from_pretrained(FIXTURES / name)
    config = json.loads((FIXTURES / name / "config.json").read_text())
    assert model.config["head_size"] == head_size
    width = config["num_attention_heads"] * config["head_dim"]
    assert tuple(d2l.get_params(model)["blocks.0.attention.W_o"].shape) == (width, config["hidden_size"])
    d2l.save_pretrained(model, tmp_path, family=FAMILIES[name])
    assert json.loads((tmp_path / "config.json").read_text())["head_dim"] == config["head_dim"]


def test_the_arguments_are_recorded(d2l):
    args = {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 3, "ffn_num_hiddens": 12,
            "window": [4, None, 4], "norm_eps": 1e-5, "tie_embeddings": True, "head_size": 6}
    config = dict(d2l.TransformerLM(**args).config)
    assert {k: config[k] for k in args} == {**args, "window": [4, None, 4]}
    assert config["rope_base"] == 10000.0  # the defaults too


def copy_of(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def edit_config(directory, **fields):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **fields}))


def edit_tensors(directory, change):
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def without(key):
    return lambda tensors: tensors.pop(key)


def plus(key, shape):
    return lambda tensors: tensors.update({key: np.zeros(shape, np.float32)})


BAD_CONFIGS = [
    ({"model_type": "gpt2"}, "model_type: 'gpt2' is not a family d2lattn reads"),
    ({"num_local_experts": 8}, "num_local_experts: 8 is not expressible in TransformerLM"),
    ({"hidden_act": "gelu"}, "hidden_act: 'gelu'; TransformerLM's SwiGLU MLP needs 'silu'"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
     "rope_parameters.rope_type: 'dynamic' is not supported"),
    ({"head_dim": 16}, "set_params: parameter 'blocks.0.attention.W_k' has shape (32, 16), expected (32, 32)"),
    ({"attention_bias": True}, "attention_bias: LLaMA's bias includes o_proj"),
]


@pytest.mark.parametrize("fields, message", BAD_CONFIGS, ids=[next(iter(f)) for f, _ in BAD_CONFIGS])
def test_configs_it_cannot_express(d2l, tmp_path, fields, message):
    directory = copy_of("llama2", tmp_path)
    edit_config(directory, **fields)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        d2l.from_pretrained(directory)


def test_a_gemma_scale_other_than_head_dim_is_refused(d2l, tmp_path):
    """Gemma scales scores by query_pre_attn_scalar ** -0.5 and TransformerLM by head_size ** -0.5:
    gemma-3-1b has both 256; where they differ (gemma-3-27b: 168 and 128) it is refused."""
    directory = copy_of("gemma3", tmp_path)
    edit_config(directory, query_pre_attn_scalar=8)
    with pytest.raises(ValueError, match=r"query_pre_attn_scalar: 8; TransformerLM scales scores by "
                                         r"1 / sqrt\(head_dim\) = 1 / sqrt\(6\)"):
        d2l.from_pretrained(directory)


BAD_TENSORS = [
    (without("model.layers.1.mlp.up_proj.weight"), "blocks.1.ffn.W_up"),
    (plus("model.layers.0.self_attn.q_proj.weight", (3, 3)), r"blocks.0.attention.W_q.*\(3, 3\)"),
    (plus("model.layers.0.self_attn.rotary.inv_freq", (4,)), "tensors TransformerLM has no place for: "
                                                             r"\['model.layers.0.self_attn.rotary.inv_freq'\]"),
    (plus("model.layers.0.self_attn.o_proj.bias", (32,)), "blocks.0.attention.b_o"),
]


@pytest.mark.parametrize("change, message", BAD_TENSORS, ids=["missing", "shape", "extra", "extra-known-name"])
def test_tensors_that_do_not_fit(d2l, tmp_path, change, message):
    directory = copy_of("llama2", tmp_path)
    edit_tensors(directory, change)
    with pytest.raises(ValueError, match=message):
        d2l.from_pretrained(directory)


def test_directories_that_are_not_models(d2l, tmp_path):
    with pytest.raises(ValueError, match="is not a local directory.*nothing is downloaded"):
        d2l.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(ValueError, match="has no config.json"):
        d2l.from_pretrained(tmp_path)
    directory = copy_of("llama2", tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has neither model.safetensors nor model.safetensors.index.json"):
        d2l.from_pretrained(directory)
    with pytest.raises(ValueError, match="dtype: expected 'float32'"):
        d2l.from_pretrained(FIXTURES / "llama2", dtype="float16")


def test_sharded_and_bfloat16_checkpoints(d2l, tmp_path):
    """A directory of two shards and an index, one shard in bfloat16, reads as the single file does
    (bfloat16 widened to float32 exactly)."""
    directory = copy_of("llama2", tmp_path)
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    save_file({n: tensors[n] for n in first}, str(directory / "model-00001-of-00002.safetensors"))
    bf16 = {n: _as_bfloat16(tensors[n]) for n in second}
    _save_bfloat16(bf16, directory / "model-00002-of-00002.safetensors")
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first}
    weight_map.update({n: "model-00002-of-00002.safetensors" for n in second})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, params = hub.load(directory)
    _, single = hub.load(FIXTURES / "llama2")
    table = hub.names(2)
    for name, value in single.items():
        want = value if table[name] in first else _widened(value)
        np.testing.assert_array_equal(params[name], want, err_msg=name)
    assert d2l.from_pretrained(directory) is not None


def _as_bfloat16(x):
    """float32 -> the uint16 bits of bfloat16, rounded to nearest even."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _widened(x):
    return (_as_bfloat16(x).astype(np.uint32) << 16).view(np.float32)


def _save_bfloat16(tensors, file):
    """A .safetensors file of BF16 tensors written by hand (NumPy has no bfloat16 for safetensors to take)."""
    header, offset, blobs = {}, 0, []
    for name, bits in tensors.items():
        blob = bits.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    pathlib.Path(file).write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


@pytest.mark.parametrize("family, kwargs, message", [
    ("mistral", {"window": [4, None]}, r"window: mistral's config.json cannot express window=\[4, None\] "
                                       r"\(it reads back as \[4, 4\]\)"),
    ("llama", {"qk_norm": True}, "qk_norm: llama's config.json cannot express qk_norm=True"),
    ("llama", {"sinks": True}, "sinks: llama's config.json cannot express sinks=True"),
    ("llama", {"attention": ["gated_deltanet", "mha"], "gated_deltanet": {}},
     r"attention: llama's config.json cannot express attention=\['gated_deltanet', 'mha'\]"),
    ("qwen3", {"rope_base": [1e4, 1e6]}, "rope_base: qwen3's config.json cannot express"),
    ("qwen2", {}, "attention_bias: qwen2's config.json cannot express attention_bias=False"),
    ("gemma3_text", {}, "qk_norm: gemma3_text's config.json cannot express qk_norm=False"),
    ("gpt2", {}, "family: 'gpt2'; expected one of"),
])
def test_save_refuses_what_the_family_cannot_express(d2l, tmp_path, family, kwargs, message):
    args = {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 12, **kwargs}
    with pytest.raises(ValueError, match=message):
        d2l.save_pretrained(d2l.TransformerLM(**args), tmp_path, family=family)


# --- text in, text out ------------------------------------------------------------------------


@pytest.mark.needs("tokenizers")
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_from_text(d2l, use_cache):
    """The fixture's prompt encodes to the ids stored beside it (its BOS first), the model continues
    them as transformers did, and the tokens decode to transformers' continuation."""
    text = json.loads((FIXTURES / "llama2" / "text.json").read_text())
    tokenizer = hub.load_tokenizer(FIXTURES / "llama2")
    ids = tokenizer.encode(text["prompt"]).ids
    assert ids == text["ids"]
    model = d2l.from_pretrained(FIXTURES / "llama2")
    tokens = d2l.generate(model, [ids], len(text["greedy"]) - len(ids), use_cache=use_cache)
    assert tokens[0].tolist() == text["greedy"]
    assert tokenizer.decode(tokens[0].tolist()) == text["text"]
    assert text["text"].startswith(text["prompt"])


def test_load_tokenizer_names_what_is_missing(tmp_path, monkeypatch):
    """No tokenizer.json, not a directory, no tokenizers library: each a ValueError that says so
    (on every backend: the checks come before the library is imported)."""
    with pytest.raises(ValueError, match=r"has no tokenizer.json \(only directories saved with a fast tokenizer"):
        hub.load_tokenizer(FIXTURES / "qwen3")
    with pytest.raises(ValueError, match="is not a local directory.*nothing is downloaded"):
        hub.load_tokenizer("HuggingFaceTB/SmolLM2-135M")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # what `import tokenizers` meets where it is not installed
    with pytest.raises(ValueError, match=r"load_tokenizer needs the `tokenizers` library, which is not installed: "
                                         r"pip install tokenizers"):
        hub.load_tokenizer(FIXTURES / "llama2")
