"""Qwen3-Next's gated delta rule and its GatedDeltaNet layer (transformers' pure-PyTorch fallbacks)
against ours: the NumPy reference (float64) and the PyTorch backend (float32), to 1e-4.

transformers takes (b, T, heads, d) and the log decay g = log(alpha); ours takes (b, heads, T, d) and
alpha, and normalises the keys and queries as its use_qk_l2norm_in_kernel=True does.
"""

import numpy as np
import pytest
import torch
from transformers.models.qwen3_next import modeling_qwen3_next as qwen3_next

from d2lattn import numpy as reference
from d2lattn import torch as ours
from tests.peer import support

pytestmark = pytest.mark.needs("peer")
B, HEADS, T, DK, DV = 2, 3, 11, 4, 5


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(B, HEADS, T, DK)), rng.normal(size=(B, HEADS, T, DK))
    return q, k, rng.normal(size=(B, HEADS, T, DV)), rng.uniform(0.2, 1.0, (B, HEADS, T)), \
        rng.uniform(0, 1, (B, HEADS, T)), rng.normal(size=(B, HEADS, DK, DV))


def theirs(rule, q, k, v, alpha, beta, state, **kwargs):
    """transformers' rule on our inputs, mapped to its layout: -> (output (b, heads, T, dv), state)."""
    time_major = [torch.from_numpy(np.swapaxes(x, 1, 2).copy()) for x in (q, k, v, np.log(alpha), beta)]
    out, S = rule(*time_major[:3], g=time_major[3], beta=time_major[4], initial_state=torch.from_numpy(state),
                  output_final_state=True, use_qk_l2norm_in_kernel=True, **kwargs)
    return np.swapaxes(out.numpy(), 1, 2), S.numpy()


@pytest.mark.parametrize("chunk_size", [4, 64])
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_gated_delta_rule_matches_transformers(form, chunk_size):
    q, k, v, alpha, beta, state = inputs()
    their_forms = {"recurrent": theirs(qwen3_next.torch_recurrent_gated_delta_rule, q, k, v, alpha, beta, state),
                   "chunked": theirs(qwen3_next.torch_chunk_gated_delta_rule, q, k, v, alpha, beta, state,
                                     chunk_size=chunk_size)}
    ref = reference.gated_delta_rule(q, k, v, alpha, beta, form=form, chunk_size=chunk_size, state=state,
                                     return_state=True)
    with torch.no_grad():
        mine = ours.gated_delta_rule(*(torch.tensor(x, dtype=torch.float32) for x in (q, k, v, alpha, beta)),
                                     form=form, chunk_size=chunk_size, state=torch.tensor(state, dtype=torch.float32),
                                     return_state=True)
    for name, (out, S) in their_forms.items():
        diffs = [support.largest(out, o) for o in (ref[0], mine[0])]
        diffs += [support.largest(S, s) for s in (ref[1], mine[1])]
        print(f"{form} (chunk {chunk_size}) vs their {name}: largest difference {max(diffs):.2e}")
        assert max(diffs) <= support.TOLERANCE, (name, diffs)


def layer_state(params, heads, dk, dv):
    """Qwen3NextGatedDeltaNet's state dict from our canonical parameters (one key head per value head):
    in_proj_qkvz's rows are, head by head, that head's q, k, v and z rows; in_proj_ba's are (b, a) per
    head; conv1d.weight (channels, 1, kernel) is our conv (kernel, channels) transposed."""
    def per_head(name, size):
        return params[name].T.reshape(heads, size, -1)                  # (heads, size, hidden)

    qkvz = np.concatenate([per_head("W_q", dk), per_head("W_k", dk), per_head("W_v", dv), per_head("W_z", dv)], 1)
    ba = np.stack([params["W_b"].T, params["W_a"].T], 1)                # (heads, 2, hidden)
    state = {"in_proj_qkvz.weight": qkvz.reshape(-1, qkvz.shape[-1]), "in_proj_ba.weight": ba.reshape(2 * heads, -1),
             "conv1d.weight": params["conv"].T[:, None, :], "dt_bias": params["dt_bias"], "A_log": params["A_log"],
             "norm.weight": params["gamma"], "out_proj.weight": params["W_o"].T}
    return {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in state.items()}


@pytest.mark.parametrize("conv_size", [4, 2])
def test_gated_delta_net_matches_qwen3_next(conv_size):
    hidden, heads, dk, dv, steps = 12, 2, 4, 3, 9
    cfg = support.config("Qwen3NextConfig", hidden_size=hidden, linear_num_key_heads=heads,
                         linear_num_value_heads=heads, linear_key_head_dim=dk, linear_value_head_dim=dv,
                         linear_conv_kernel_dim=conv_size,
                         hidden_act="silu", rms_norm_eps=1e-6, num_hidden_layers=1, layer_types=["linear_attention"])
    args = dict(head_size=dk, value_head_size=dv, conv_size=conv_size, chunk_size=4)
    ref, mine, params = support.pair("GatedDeltaNet", hidden, heads, **args)
    hf = support.load(support.module(qwen3_next.Qwen3NextGatedDeltaNet, cfg, 0), layer_state(params, heads, dk, dv))
    X = np.random.default_rng(1).normal(size=(B, steps, hidden))
    with torch.no_grad():
        want = hf(torch.from_numpy(X)).numpy()
        got = mine(torch.from_numpy(X.astype(np.float32)))[0].numpy()
    diffs = support.largest(want, ref(X)[0]), support.largest(want, got)
    print(f"Qwen3NextGatedDeltaNet (conv {conv_size}): reference {diffs[0]:.2e}, torch {diffs[1]:.2e}")
    assert max(diffs) <= support.TOLERANCE, diffs
