"""Hugging Face model directories to TransformerLM's constructor and canonical parameters, and back.

Backend-free (NumPy, the standard library and safetensors): every backend's `from_pretrained`
and `save_pretrained` go through `load` and `save` here. A directory in Hugging Face's layout
holds `config.json` and `model.safetensors`, or shards listed in `model.safetensors.index.json`.
What TransformerLM cannot express is refused with a ValueError naming the config field, never
approximated. Nothing is downloaded: a path that is not a directory is an error.
"""

import inspect
import json
import os
import pathlib

import numpy as np

from d2lattn import api

# model_type -> architecture name transformers' Auto classes read from config.json
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
# Gemma 3's RMSNorms scale by (1 + weight): the canonical gain is 1 + its stored weight.
OFFSET_NORMS = {"gemma3_text"}
# Fields that name a piece TransformerLM does not have, and the value that means it is absent.
ABSENT = {"num_local_experts": (None, 0, 1), "num_experts": (None, 0, 1), "n_routed_experts": (None, 0),
          "mlp_bias": (None, False), "pretraining_tp": (None, 1), "use_bidirectional_attention": (None, False)}
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _local(path):
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ValueError(f"path: {str(path)!r} is not a local directory (from_pretrained reads a model directory "
                         "saved by transformers; nothing is downloaded, so a hub name needs `huggingface-cli "
                         "download` first)")
    return path


def _directory(path):
    path = _local(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"path: {str(path)!r} has no config.json")
    return path


def read_config(path):
    """config.json of a model directory, checked to be a family TransformerLM expresses."""
    config = json.loads((_directory(path) / "config.json").read_text())
    family = config.get("model_type")
    if family not in ARCHITECTURES:
        raise ValueError(f"model_type: {family!r} is not a family d2lattn reads; expected one of "
                         f"{sorted(ARCHITECTURES)}")
    return config


def _rope(config, rope=None):
    """rope_base and rope_scaling from transformers 5's rope_parameters (or 4.x's rope_theta/rope_scaling)."""
    rope = dict(rope or config.get("rope_parameters") or {})
    if not rope:
        rope = dict(config.get("rope_scaling") or {}, rope_theta=config.get("rope_theta", 10000.0))
    kind = rope.pop("rope_type", rope.pop("type", "default"))
    base = float(rope.pop("rope_theta"))
    if kind == "default":
        return base, None
    if kind not in ("llama3", "yarn"):
        raise ValueError(f"rope_parameters.rope_type: {kind!r} is not supported; expected 'default', "
                         "'llama3' or 'yarn'")
    return base, {"type": kind, **rope}


def _layer_windows(config):
    """One window per layer (None = global) from layer_types and sliding_window."""
    n, window = config["num_hidden_layers"], config.get("sliding_window")
    if config["model_type"] == "mistral":
        return window
    if config["model_type"] == "llama":  # LLaMA's attention has no window, whatever the config says
        return None
    types = config.get("layer_types") or ["full_attention"] * n
    if not config.get("use_sliding_window", False) and "sliding_attention" not in types:
        return None
    if len(types) != n or set(types) - {"full_attention", "sliding_attention"}:
        raise ValueError(f"layer_types: expected {n} entries of 'full_attention' or 'sliding_attention', "
                         f"got {types!r}")
    return [window if kind == "sliding_attention" else None for kind in types]


def _gemma(config, kwargs):
    """Gemma 3's differences: per-layer RoPE bases, post-norms, scaled embeddings, GeGLU, soft-caps."""
    if config.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"hidden_activation: {config['hidden_activation']!r}; expected 'gelu_pytorch_tanh'")
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if config.get("query_pre_attn_scalar", head) != head:
        raise ValueError(f"query_pre_attn_scalar: {config['query_pre_attn_scalar']!r}; TransformerLM scales "
                         f"scores by 1 / sqrt(head_dim) = 1 / sqrt({head})")
    types = config.get("layer_types") or ["full_attention"] * config["num_hidden_layers"]
    ropes = {kind: _rope(config, config["rope_parameters"][kind]) for kind in set(types)}
    if any(scaling is not None for _, scaling in ropes.values()):
        raise ValueError("rope_parameters: Gemma 3 with RoPE scaling is not supported (each layer type "
                         "needs its own scaling)")
    kwargs.update(rope_base=[ropes[kind][0] for kind in types], qk_norm=True, post_norms=True,
                  scale_embeddings=True, ffn_activation="gelu_tanh",
                  final_logit_cap=config.get("final_logit_softcapping"),
                  logit_cap=config.get("attn_logit_softcapping"))
    kwargs.pop("rope_scaling", None)
    return kwargs


def model_kwargs(config):
    """TransformerLM's constructor arguments for a config; a ValueError names a field it cannot express."""
    for field, absent in ABSENT.items():
        if config.get(field) not in absent:
            raise ValueError(f"{field}: {config[field]!r} is not expressible in TransformerLM "
                             "(one dense SwiGLU MLP per layer, causal attention)")
    if config["model_type"] not in OFFSET_NORMS and config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act: {config['hidden_act']!r}; TransformerLM's SwiGLU MLP needs 'silu'")
    h, heads = config["hidden_size"], config["num_attention_heads"]
    head = config.get("head_dim") or h // heads  # transformers' default where config.json has none
    family = config["model_type"]
    if family == "llama" and config.get("attention_bias"):
        raise ValueError("attention_bias: LLaMA's bias includes o_proj, which TransformerLM's attention_bias "
                         "(on W_q, W_k, W_v, as Qwen2) does not")
    gemma = family in OFFSET_NORMS
    base, scaling = (None, None) if gemma else _rope(config)
    kwargs = {"vocab_size": config["vocab_size"], "num_hiddens": h, "num_heads": heads,
              "num_layers": config["num_hidden_layers"], "ffn_num_hiddens": config["intermediate_size"],
              "num_kv_heads": config.get("num_key_value_heads") or heads, "window": _layer_windows(config),
              "head_size": None if head * heads == h else head,  # Qwen3's and Gemma 3's are wider
              "rope_base": base, "norm_eps": float(config.get("rms_norm_eps", 1e-6)),
              "tie_embeddings": bool(config.get("tie_word_embeddings", False))}
    if scaling is not None:
        kwargs["rope_scaling"] = scaling
    if family == "qwen2" or (family == "qwen3" and config.get("attention_bias")):
        kwargs["attention_bias"] = True
    if family == "qwen3":
        kwargs["qk_norm"] = True
    return _gemma(config, kwargs) if gemma else kwargs


# The norms of a block, canonical -> Hugging Face: LLaMA's "post-attention" norm is the FFN's pre-norm;
# Gemma's normalises the attention's output, and two more wrap the FFN.
NORMS = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
GEMMA_NORMS = {"norm1": "input_layernorm", "post_norm1": "post_attention_layernorm",
               "norm2": "pre_feedforward_layernorm", "post_norm2": "post_feedforward_layernorm"}


def _layer_names(i, family):
    """canonical name -> Hugging Face name, for layer i (dense maps are transposed on the way)."""
    hf, ours = f"model.layers.{i}.", f"blocks.{i}."
    norms = GEMMA_NORMS if family in OFFSET_NORMS else NORMS
    names = {ours + f"{n}.gamma": hf + f"{theirs}.weight" for n, theirs in norms.items()}
    names |= {ours + "attention.q_norm.gamma": hf + "self_attn.q_norm.weight",
             ours + "attention.k_norm.gamma": hf + "self_attn.k_norm.weight"}
    for x in "qkvo":
        names[ours + f"attention.W_{x}"] = hf + f"self_attn.{x}_proj.weight"
        names[ours + f"attention.b_{x}"] = hf + f"self_attn.{x}_proj.bias"
    for ffn, mlp in (("W_gate", "gate_proj"), ("W_up", "up_proj"), ("W_down", "down_proj")):
        names[ours + f"ffn.{ffn}"] = hf + f"mlp.{mlp}.weight"
    return names


def names(num_layers, family="llama"):
    """Every canonical name TransformerLM may have -> its Hugging Face name."""
    table = {"embedding": "model.embed_tokens.weight", "norm.gamma": "model.norm.weight", "W_out": "lm_head.weight"}
    for i in range(num_layers):
        table.update(_layer_names(i, family))
    return table


def _to_canonical(name, value, family):
    """transformers' tensor as TransformerLM holds it: dense maps transposed ((out, in) -> (in, out)),
    Gemma's norm weights w as gains 1 + w."""
    if name.rsplit(".", 1)[-1].startswith("W_"):
        return value.T
    return value + 1 if name.endswith("gamma") and family in OFFSET_NORMS else value


def _from_canonical(name, value, family):
    if name.rsplit(".", 1)[-1].startswith("W_"):
        return value.T
    return value - 1 if name.endswith("gamma") and family in OFFSET_NORMS else value


def _read_safetensors(file):
    """{name: float32 array} of one .safetensors file, bfloat16 included (NumPy has no bfloat16).
    The file is mapped copy-on-write, as safetensors maps it for transformers: its float32 tensors
    are writable views whose pages are read when first touched, not all at once here."""
    raw = np.memmap(file, dtype=np.uint8, mode="c")                             # (bytes,)
    size = int.from_bytes(raw[:8].tobytes(), "little")
    header = json.loads(raw[8:8 + size].tobytes())
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        start, end = (8 + size + offset for offset in info["data_offsets"])
        if info["dtype"] == "BF16":  # the top 16 bits of a float32
            bits = raw[start:end].view(np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in SAFETENSORS_DTYPES:
            array = raw[start:end].view(SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}; expected a float type")
        tensors[name] = array.astype(np.float32, copy=False).reshape(info["shape"])
    return tensors


def read_tensors(path):
    """Every tensor of a model directory: model.safetensors, or the shards its index lists."""
    path = _directory(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"path: {str(path)!r} has neither model.safetensors nor model.safetensors.index.json")
    tensors = {}
    for file in files:
        if not (path / file).is_file():
            raise ValueError(f"path: the shard {file!r} listed in model.safetensors.index.json is missing")
        tensors.update(_read_safetensors(path / file))
    return tensors


def load(path, dtype="float32"):
    """(TransformerLM's constructor arguments, its canonical parameters) from a model directory.
    The caller's set_params is strict, so a missing or mis-shaped tensor is named there; a
    tensor here that no canonical name claims is an error here."""
    if dtype != "float32":
        raise ValueError(f"dtype: expected 'float32' (the dtype every backend computes TransformerLM in), "
                         f"got {dtype!r}")
    config = read_config(path)
    kwargs = model_kwargs(config)
    tensors = read_tensors(path)
    if kwargs["tie_embeddings"]:
        tensors.pop("lm_head.weight", None)  # some checkpoints store the tied head twice
    family = config["model_type"]
    table = {hf: ours for ours, hf in names(kwargs["num_layers"], family).items()}
    extra = sorted(set(tensors) - set(table))
    if extra:
        raise ValueError(f"path: tensors TransformerLM has no place for: {extra[:5]}")
    params = {table[hf]: _to_canonical(table[hf], value, family) for hf, value in tensors.items()}
    return kwargs, params


class Arguments(dict):
    """A model's constructor arguments: a dict that hashes by its contents, so a Flax NNX module
    holding it stays a valid static part of its graph under jax.jit."""

    def __hash__(self):
        return hash(json.dumps(self, sort_keys=True, default=repr))


def arguments(local_vars):
    """A constructor's arguments, from `locals()` taken first thing in its body (framework extras left out)."""
    return Arguments({name: value for name, value in local_vars.items()
                      if name not in ("self", "__class__", "rngs", "kwargs")})


def _per_layer(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _config(kwargs, family):
    """config.json for TransformerLM's constructor arguments, in `family`'s format."""
    if family not in ARCHITECTURES:
        raise ValueError(f"family: {family!r}; expected one of {sorted(ARCHITECTURES)}")
    h, heads, n = kwargs["num_hiddens"], kwargs["num_heads"], kwargs["num_layers"]
    head = kwargs.get("head_size") or h // heads
    windows, bases = _per_layer(kwargs.get("window"), n), _per_layer(kwargs.get("rope_base", 10000.0), n)
    types = ["full_attention" if w is None else "sliding_attention" for w in windows]
    config = {"architectures": [ARCHITECTURES[family]], "model_type": family, "vocab_size": kwargs["vocab_size"],
              "hidden_size": h, "num_attention_heads": heads, "num_hidden_layers": n,
              "intermediate_size": kwargs["ffn_num_hiddens"],
              "num_key_value_heads": kwargs.get("num_kv_heads") or heads, "head_dim": head,
              "rms_norm_eps": kwargs.get("norm_eps", 1e-6), "tie_word_embeddings": bool(kwargs.get("tie_embeddings")),
              "attention_bias": bool(kwargs.get("attention_bias")), "max_position_embeddings": 4096,
              "sliding_window": next((w for w in windows if w is not None), None)}
    if family in OFFSET_NORMS:
        config.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=head, layer_types=types,
                      rope_parameters={kind: {"rope_type": "default", "rope_theta": bases[types.index(kind)]}
                                       for kind in set(types)},
                      final_logit_softcapping=kwargs.get("final_logit_cap"),
                      attn_logit_softcapping=kwargs.get("logit_cap"))
    else:
        scaling = dict(kwargs.get("rope_scaling") or {})
        config.update(hidden_act="silu", rope_parameters={"rope_type": scaling.pop("type", "default"),
                                                          "rope_theta": bases[0], **scaling})
        if family != "mistral":
            config.update(layer_types=types, use_sliding_window=config["sliding_window"] is not None)
    _check_expressed(kwargs, model_kwargs(config), family)
    return config


def _check_expressed(kwargs, read_back, family):
    """What the written config.json reads back as must be the model: an argument the family's format
    cannot hold (QK-norm in LLaMA, per-layer windows in Mistral, sinks anywhere) is a ValueError."""
    n = kwargs["num_layers"]
    for name, parameter in inspect.signature(api.TransformerLM.__init__).parameters.items():
        if name in ("self", "dropout"):  # dropout acts in training only: no checkpoint holds it
            continue
        ours, theirs = kwargs.get(name, parameter.default), read_back.get(name, parameter.default)
        if name in ("window", "rope_base"):
            ours, theirs = _per_layer(ours, n), _per_layer(theirs, n)
        if name == "num_kv_heads":
            ours, theirs = ours or kwargs["num_heads"], theirs or kwargs["num_heads"]
        if name == "head_size":  # None is num_hiddens // num_heads
            ours, theirs = (x or kwargs["num_hiddens"] // kwargs["num_heads"] for x in (ours, theirs))
        if ours != theirs:
            raise ValueError(f"{name}: {family}'s config.json cannot express {name}={ours!r} (it reads back as "
                             f"{theirs!r})")


def save(kwargs, params, path, family):
    """Write config.json and model.safetensors that transformers' AutoModelForCausalLM opens."""
    from safetensors.numpy import save_file

    config = _config(kwargs, family)
    table = names(kwargs["num_layers"], family)
    tensors = {table[name]: np.ascontiguousarray(_from_canonical(name, value, family), dtype=np.float32)
               for name, value in params.items()}
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # a new file put in the old one's place: a model loaded from this directory maps the old one
    save_file(tensors, str(path / "model.safetensors.partial"), metadata={"format": "pt"})
    os.replace(path / "model.safetensors.partial", path / "model.safetensors")


def load_tokenizer(path):
    """The `tokenizers` library's Tokenizer for a directory's tokenizer.json, so that `generate` can
    start from text: `ids = tokenizer.encode(text).ids`, then `tokenizer.decode(list(tokens[0]))`.
    Encoding adds what the file's post-processor adds (LLaMA's BOS); decoding drops special tokens."""
    file = _local(path) / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"path: {str(file.parent)!r} has no tokenizer.json (only directories saved with a fast "
                         "tokenizer have one)")
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise ValueError("load_tokenizer needs the `tokenizers` library, which is not installed: "
                         "pip install tokenizers (transformers brings it)") from err
    return Tokenizer.from_file(str(file))
