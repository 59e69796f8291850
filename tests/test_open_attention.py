"""The attention options of today's open models on the backend under test.

Beyond the harness cases (tests/cases.py: every option against the NumPy reference, eager and
compiled, forward and gradients) and the Hugging Face peers (tests/peer/): properties of sinks,
soft-capping and partial and scaled RoPE, and bad input with the same message everywhere.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference
from d2lattn.rotary import rope_frequencies
from tests.strategies import PROFILE
from tests.support import bad_input_test, random_params, t

FEW = settings(PROFILE, max_examples=10)
SHAPES = st.sampled_from([(1, 3, 4, 4), (2, 4, 6, 8)])   # (b, q, k, d): few, so JAX compiles little


def attention_inputs(d2l, seed, shape):
    """queries, keys, values (float32 tensors), a random mask with an empty row, and sink logits (b, q)."""
    b, q, k, d = shape
    rng = np.random.default_rng(seed)
    Q, K, V = (rng.normal(size=s).astype(np.float32) for s in ((b, q, d), (b, k, d), (b, k, d)))
    mask = rng.random((b, q, k)) < 0.6
    mask[0, 0] = False                                                          # nothing to attend to
    sinks = (3 * rng.normal(size=(b, q))).astype(np.float32)
    return (*(d2l.tensor(x) for x in (Q, K, V)), d2l.tensor(mask), d2l.tensor(sinks)), mask


@FEW
@given(seed=st.integers(0, 2**16), shape=SHAPES)
def test_a_sink_never_adds_weight_and_takes_the_same_share_of_every_key(d2l, seed, shape):
    (Q, K, V, mask, sinks), keep = attention_inputs(d2l, seed, shape)
    attention = d2l.DotProductAttention()
    plain_out = d2l.to_numpy(attention(Q, K, V, mask=mask, training=False))
    plain = d2l.to_numpy(attention.attention_weights)
    out = d2l.to_numpy(attention(Q, K, V, mask=mask, sinks=sinks, training=False))
    weights = d2l.to_numpy(attention.attention_weights)                         # (b, q, k)
    total = weights.sum(-1, keepdims=True)                                      # what the sink leaves the keys
    assert np.all(weights <= plain + 1e-6) and np.all(total <= 1 + 1e-6)
    np.testing.assert_allclose(weights, plain * total, atol=1e-6)              # every key scaled alike
    empty = ~keep.any(-1)                                                       # (b, q): rows with no key
    assert empty.any() and np.all(weights[empty] == 0) and np.all(out[empty] == 0)
    assert np.all(np.abs(out) <= np.abs(plain_out).max() + 1e-5)


@FEW
@given(seed=st.integers(0, 2**16), shape=SHAPES)
def test_soft_capping_tends_to_the_identity_as_the_cap_grows(d2l, seed, shape):
    (Q, K, V, mask, _), _ = attention_inputs(d2l, seed, shape)
    Q = Q * 3                                                                   # scores of a few units
    attention = d2l.DotProductAttention()
    plain = d2l.to_numpy(attention(Q, K, V, mask=mask, training=False))
    errors = [np.abs(d2l.to_numpy(attention(Q, K, V, mask=mask, logit_cap=cap, training=False)) - plain).max()
              for cap in (3.0, 30.0, 3e4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-5, errors


@pytest.mark.parametrize("cap", [0.1, 1.0])
def test_a_cap_bounds_how_far_apart_two_weights_of_a_row_can_be(d2l, cap):
    """Capped scores lie in (-cap, cap): no weight exceeds another of its row by more than e^(2 cap)."""
    attention = d2l.DotProductAttention()
    attention(t(d2l, 2, 3, 4) * 10, t(d2l, 2, 5, 4), t(d2l, 2, 5, 2), logit_cap=cap, training=False)
    weights = d2l.to_numpy(attention.attention_weights)
    assert np.all(weights.max(-1) / weights.min(-1) <= np.exp(2 * cap) * (1 + 1e-5))


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, None])
def test_rope_fraction_rotates_the_first_features_of_each_head_and_keeps_the_rest(d2l, fraction):
    """The cached keys are the projected keys, their first rope_fraction * head_size features
    rotated at their positions by RoPE over that many features; rope_fraction=1 is RoPE as before,
    rope_base=None (a NoPE layer) rotates nothing."""
    h, heads, dh = 16, 2, 8
    args = {"rope_base": None} if fraction is None else {"rope_fraction": fraction}
    layer, ref = d2l.CausalSelfAttention(h, heads, **args), reference.CausalSelfAttention(h, heads, **args)
    params = random_params(ref, np.random.default_rng(0))
    d2l.set_params(layer, params)
    X = np.random.default_rng(1).normal(size=(2, 5, h))
    keys = d2l.to_numpy(layer(d2l.tensor(X.astype(np.float32)), training=False)[1][0])  # (b, heads, T, dh)
    raw = (X @ params["W_k"]).reshape(2, 5, heads, dh).transpose(0, 2, 1, 3)           # (b, heads, T, dh)
    r = 0 if fraction is None else int(fraction * dh)
    rotated = reference.RotaryPositionalEncoding(r)(raw[..., :r]) if r else raw[..., :0]
    np.testing.assert_allclose(keys, np.concatenate([rotated, raw[..., r:]], -1), atol=1e-5)


@FEW
@given(head_size=st.sampled_from([4, 8, 16]), base=st.sampled_from([100.0, 1e4, 5e5]),
       kind=st.sampled_from(["llama3", "yarn"]))
def test_a_scaling_of_factor_one_is_plain_rope(d2l, head_size, base, kind):
    scaling = {"llama3": {"type": "llama3", "factor": 1.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64},
               "yarn": {"type": "yarn", "factor": 1.0, "original_max_position_embeddings": 64}}[kind]
    X = t(d2l, 2, 3, head_size)
    plain = d2l.RotaryPositionalEncoding(head_size, base)(X, offset=40)
    scaled = d2l.RotaryPositionalEncoding(head_size, base, scaling=scaling)(X, offset=40)
    np.testing.assert_allclose(d2l.to_numpy(scaled), d2l.to_numpy(plain), atol=1e-6)


LONG = {
    "llama3": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
    "yarn": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096},
    "yarn-untruncated": {"type": "yarn", "factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False,
                         "original_max_position_embeddings": 2048},
}


@pytest.mark.parametrize("name", LONG)
def test_scaled_frequencies_slow_down_smoothly_from_the_fastest_kept_to_the_slowest_by_factor(name):
    """theta / theta_scaled climbs from 1 (the fast features, kept) to `factor` (the slow ones),
    never down and in small steps: the bands join without a jump. (Backend-free: d2lattn/rotary.py.)"""
    scaling = LONG[name]
    plain, scaled = rope_frequencies(512, 5e5)[0], rope_frequencies(512, 5e5, scaling)[0]
    slowdown = plain / scaled                                                   # (256,), fast to slow
    assert slowdown[0] == pytest.approx(1) and slowdown[-1] == pytest.approx(scaling["factor"])
    assert np.all(np.diff(slowdown) >= -1e-12) and np.diff(slowdown).max() <= (scaling["factor"] - 1) / 5


def test_yarn_attention_factor_is_a_tenth_of_log_factor_plus_one(d2l):
    """Every rotated pair grows by the attention factor, so the scores grow by its square."""
    scaling = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}
    X = t(d2l, 2, 3, 8)
    norms = [np.linalg.norm(d2l.to_numpy(d2l.RotaryPositionalEncoding(8, scaling=s)(X, offset=5)), axis=-1)
             for s in (None, scaling)]
    np.testing.assert_allclose(norms[1], (0.1 * np.log(8.0) + 1) * norms[0], rtol=1e-5)


def _rope(scaling):
    return lambda d2l: d2l.RotaryPositionalEncoding(8, scaling=scaling)


BAD_INPUT = {
    "odd rotated features": (lambda d2l: d2l.CausalSelfAttention(8, 2, rope_fraction=0.25), ValueError,
                             r"rope_fraction \* head_size must be an even whole number of features \(rotary "
                             r"encoding rotates pairs\), got 0.25 \* 4 = 1"),
    "rope_fraction above 1": (lambda d2l: d2l.CausalSelfAttention(8, 2, rope_fraction=1.5), ValueError,
                              r"rope_fraction must be a number in \(0, 1\], got 1.5"),
    "unknown scaling type": (_rope({"type": "ntk", "factor": 2.0}), ValueError,
                             r"scaling must be None or a dict with 'type' one of 'llama3', 'yarn', got 'ntk'"),
    "scaling not a dict": (_rope("llama3"), ValueError,
                           r"scaling must be None or a dict with 'type' one of 'llama3', 'yarn', got 'llama3'"),
    "missing scaling field": (_rope({"type": "llama3", "factor": 8.0}), ValueError,
                              r"scaling of type 'llama3' needs the fields \['factor', 'low_freq_factor', "
                              r"'high_freq_factor', 'original_max_position_embeddings'\] \(optional: \[\]\), got "
                              r"missing \['low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'\]"),
    "unknown scaling field": (_rope({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                     "betafast": 8}), ValueError, r"scaling of type 'yarn' needs .* got unknown "
                                                                  r"\['betafast'\]"),
    "scaling factor not positive": (_rope({"type": "yarn", "factor": -2.0, "original_max_position_embeddings": 64}),
                                    ValueError, r"scaling\['factor'\] must be a positive number, got -2.0"),
    "model rope_scaling": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, rope_scaling={"type": "linear"}), ValueError,
                           r"scaling must be None or a dict with 'type' one of 'llama3', 'yarn', got 'linear'"),
    "logit_cap zero": (lambda d2l: d2l.CausalSelfAttention(8, 2, logit_cap=0), ValueError,
                       r"logit_cap must be None or a positive number \(scores become cap \* tanh\(scores / cap\)\), "
                       r"got 0"),
    "model logit_cap negative": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, logit_cap=-1.0), ValueError,
                                 r"logit_cap must be None or a positive number .* got -1.0"),
    "call logit_cap negative": (lambda d2l: d2l.DotProductAttention()(t(d2l, 2, 3, 4), t(d2l, 2, 5, 4),
                                                                      t(d2l, 2, 5, 2), logit_cap=-0.5),
                                ValueError, r"logit_cap must be None or a positive number .* got -0.5"),
    "sinks of the wrong shape": (lambda d2l: d2l.DotProductAttention()(t(d2l, 2, 3, 4), t(d2l, 2, 5, 4),
                                                                       t(d2l, 2, 5, 2), sinks=t(d2l, 4)),
                                 ValueError, r"sinks of shape \(4,\) do not broadcast to the scores' rows \(2, 3\) "
                                             r"\(one sink logit per query row\)"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)
