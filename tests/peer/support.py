"""Building Hugging Face's own modules from tiny configs and giving them our weights.

No download: every module is built from a config made here, in float64, with the eager
attention (its formula written out), and loaded with the canonical parameters of a d2lattn
module drawn at the harness's scale (uniform in +-1/sqrt(fan_in), tests/harness.py), not
HF's std 0.02, under which two norms or two scalings are hard to tell apart.
"""

import math

import numpy as np
import torch
import transformers
from transformers import masking_utils

from d2lattn import numpy as reference
from d2lattn import torch as ours

TOLERANCE = 1e-4
PROJECTIONS = {"W_q": "q_proj", "W_k": "k_proj", "W_v": "v_proj", "W_o": "o_proj"}


def draw(module, seed=0):
    """The canonical parameters of a (reference) module, drawn as the harness draws them."""
    rng = np.random.default_rng(seed)
    shapes = {n: p.shape for n, p in reference.get_params(module).items()}
    return {n: rng.uniform(-1, 1, shapes[n]) / math.sqrt(shapes[n][0]) for n in sorted(shapes)}


def pair(cls_name, *args, seed=0, **kwargs):
    """(reference module, torch module, their shared parameters): the same class built on both."""
    ref, mine = getattr(reference, cls_name)(*args, **kwargs), getattr(ours, cls_name)(*args, **kwargs).eval()
    params = draw(ref, seed)
    reference.set_params(ref, params)
    ours.set_params(mine, params)
    return ref, mine, params


def config(cls_name, **fields):
    """A transformers config with the eager attention (softcap and sinks in plain torch)."""
    cfg = getattr(transformers, cls_name)(**fields)
    cfg._attn_implementation = "eager"
    return cfg


def module(cls, *args):
    """A transformers module in float64 and evaluation mode."""
    return cls(*args).double().eval()


def attention_state(params, *, gate_heads=None, norm_offset=0.0):
    """HF attention's state dict from canonical parameters: `x_proj.weight` is W_x transposed
    ((out, in), as nn.Linear keeps it), `x_proj.bias` is b_x, `q_norm.weight` the gain less
    `norm_offset` (1 where HF's RMSNorm multiplies by 1 + weight). With `gate_heads`, Qwen3-Next's
    q_proj: per head its query rows, then its gate rows (W_gate's columns of that head)."""
    state = {}
    for name, value in params.items():
        kind, _, leaf = name.partition("_")
        if name in PROJECTIONS:
            state[f"{PROJECTIONS[name]}.weight"] = value.T
        elif kind == "b" and f"W_{leaf}" in PROJECTIONS:
            state[f"{PROJECTIONS['W_' + leaf]}.bias"] = value
        elif name.endswith("norm.gamma"):
            state[name.replace("gamma", "weight")] = value - norm_offset
        elif name != "W_gate":
            state[name] = value
    if gate_heads is not None:
        q, gate = (params[n].T.reshape(gate_heads, -1, params[n].shape[0]) for n in ("W_q", "W_gate"))
        state["q_proj.weight"] = np.concatenate([q, gate], 1).reshape(-1, params["W_q"].shape[0])  # per head: q, gate
    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in state.items()}


def load(hf_module, state):
    """Load `state` into `hf_module`, every entry used and every parameter set."""
    missing, unexpected = hf_module.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf_module


def causal_mask(cfg, T, *, sliding=False, b=1):
    """(b, 1, T, T) float64: the eager attention's `attention_mask` as Hugging Face makes it for `cfg`
    (0 where a query may attend, the lowest float elsewhere), causal, or with `cfg.sliding_window`."""
    make = masking_utils.create_sliding_window_causal_mask if sliding else masking_utils.create_causal_mask
    return make(cfg, torch.zeros(b, T, cfg.hidden_size, dtype=torch.float64), None, None,
                position_ids=torch.arange(T)[None], allow_is_causal_skip=False)


def rotary(hf_rotary, T, dtype=torch.float64):
    """(cos, sin) (1, T, rotated features) of an HF rotary embedding at positions 0 .. T - 1."""
    return hf_rotary(torch.zeros(1, T, 1, dtype=dtype), torch.arange(T)[None])


def run(hf_attention, X, position_embeddings, mask):
    """HF attention's output (b, T, hidden) as NumPy float64."""
    with torch.no_grad():
        out, _ = hf_attention(torch.from_numpy(X), position_embeddings=position_embeddings, attention_mask=mask)
    return out.numpy()


def largest(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
