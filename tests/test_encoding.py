"""encoding: the sinusoidal PositionalEncoding, ALiBi and rotary positions (RoPE) on the backend under test.

Beyond the harness (tests/cases.py): the sinusoid table against its closed form and the
reference, ALiBi's slopes and biases, RoPE's two conventions and its relative property,
Llama 3's and YaRN's scalings (factor 1 is plain RoPE; the slowdown climbs smoothly from 1 to
the factor; YaRN's attention factor), dropout and the training mode, and bad input.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import _backend
from d2lattn import numpy as reference
from d2lattn._checks import dtype_name
from d2lattn.rotary import rope_frequencies
from tests.modes import RATE, assert_inverted, dropout_tests
from tests.strategies import PROFILE
from tests.support import bad_input_test, t

FEW = settings(PROFILE, max_examples=10)

# --- the sinusoidal positional encoding -------------------------------------------------------


def test_positional_encoding_closed_form(d2l):
    """P[0, t, 2i] = sin(t / 10000^(2i/d)), P[0, t, 2i+1] = cos(t / 10000^(2i/d)); odd d too."""
    for d in (8, 7):
        P = d2l.to_numpy(d2l.PositionalEncoding(d, max_len=50).P)
        assert P.shape == (1, 50, d)
        for pos in (0, 1, 5, 49):
            for j in range(d):
                i = j // 2
                angle = pos / 10000 ** (2 * i / d)
                want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
                assert abs(P[0, pos, j] - want) < 1e-6, (d, pos, j)


def test_positional_encoding_by_hand(d2l):
    P = d2l.to_numpy(d2l.PositionalEncoding(4, max_len=3).P)[0]
    np.testing.assert_allclose(P[0], [0, 1, 0, 1], atol=1e-7)                         # position 0
    np.testing.assert_allclose(P[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], atol=1e-6)
    X = d2l.zeros((1, 3, 4))                                                         # the call adds P
    np.testing.assert_allclose(d2l.to_numpy(d2l.PositionalEncoding(4, max_len=3)(X, training=False))[0], P,
                               atol=1e-7)


@pytest.mark.parametrize("num_hiddens", [32, 33])
def test_positional_encoding_table(d2l, num_hiddens):
    """The whole table, to max_len 1000 (large angles), against the float64 reference."""
    ours = d2l.to_numpy(d2l.PositionalEncoding(num_hiddens).P)
    want = reference.PositionalEncoding(num_hiddens).P
    assert ours.shape == (1, 1000, num_hiddens)
    np.testing.assert_allclose(ours, want, atol=1e-5)


# --- ALiBi (against the reference, checked by hand in tests/test_oracles.py) ------------------


def test_alibi_slopes(d2l):
    for n in range(1, 13):  # powers of two and the in-between rule
        slopes = d2l.alibi_slopes(n)
        assert dtype_name(slopes.dtype) == _backend.FLOAT_DTYPE[d2l.BACKEND]
        np.testing.assert_allclose(d2l.to_numpy(slopes), reference.alibi_slopes(n), rtol=1e-6, err_msg=f"n={n}")


@pytest.mark.parametrize("heads, q, k, offset", [(4, 3, None, 0), (3, 2, 5, 3), (6, 4, 4, -2), (1, 1, 7, 6)])
def test_alibi_bias(d2l, heads, q, k, offset):
    bias = d2l.alibi_bias(heads, q, k, offset=offset)
    assert dtype_name(bias.dtype) == _backend.FLOAT_DTYPE[d2l.BACKEND]
    np.testing.assert_allclose(d2l.to_numpy(bias), reference.alibi_bias(heads, q, k, offset=offset), rtol=1e-6)


# --- rotary positions -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 5])
def test_rope_conventions_differ_by_a_permutation(d2l, offset):
    """Interleaved pairs (x[2i], x[2i+1]) are split-halves pairs (x[i], x[i + d/2]) once the features are
    ordered evens then odds: interleaved(X)[..., perm] == halves(X[..., perm])."""
    X = np.random.default_rng(0).normal(size=(2, 3, 5, 8))
    perm = np.r_[0:8:2, 1:8:2]
    interleaved = d2l.to_numpy(d2l.RotaryPositionalEncoding(8, interleaved=True)(d2l.tensor(X), offset=offset))
    halves = d2l.to_numpy(d2l.RotaryPositionalEncoding(8)(d2l.tensor(X[..., perm]), offset=offset))
    np.testing.assert_allclose(interleaved[..., perm], halves, atol=1e-6)
    assert np.abs(interleaved - halves).max() > 1e-2  # the same numbers only after the permutation


@PROFILE
@given(data=st.data())
def test_rotated_scores_depend_only_on_the_distance(d2l, data):
    """q . k after RoPE depends on the positions only through their difference: shifting queries and
    keys by the same amount (through `offset`) leaves every score as it was; the reference fixes the
    scores themselves (an offset that is ignored would pass the first check, not the second)."""
    # a few sizes (tests/strategies.py: few shapes); the offsets, the base and the values vary freely
    head_size, steps = data.draw(st.sampled_from([(2, 1), (8, 4), (4, 3)]), label="head_size, t")
    args = {"head_size": head_size, "base": data.draw(st.sampled_from([10000.0, 100.0, 10.0]), label="base"),
            "interleaved": data.draw(st.booleans(), label="interleaved")}
    at_q, at_k, shift = (data.draw(st.integers(-20, 60), label=n) for n in ("query offset", "key offset", "shift"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    Q, K = rng.normal(size=(steps, head_size)), rng.normal(size=(steps + 1, head_size))
    rope, ref = d2l.RotaryPositionalEncoding(**args), reference.RotaryPositionalEncoding(**args)

    def scores(lib, module, shift):
        q = lib.to_numpy(module(lib.tensor(Q), offset=at_q + shift))  # rows at at_q + shift, at_q + shift + 1, ...
        k = lib.to_numpy(module(lib.tensor(K), offset=at_k + shift))
        return q @ k.T                                                 # (t, t + 1)

    ours = scores(d2l, rope, 0)
    np.testing.assert_allclose(ours, scores(reference, ref, 0), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(scores(d2l, rope, shift), ours, atol=1e-4, rtol=1e-5)


# --- dropout and the training mode ------------------------------------------------------------

test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused = dropout_tests("encoding")


@pytest.mark.needs("dropout")
def test_positional_encoding_dropout_is_inverted(d2l):
    encoding = d2l.PositionalEncoding(32, dropout=RATE, max_len=64)
    X = d2l.zeros((4, 64, 32))
    full = d2l.to_numpy(encoding(X, training=False))
    assert_inverted(d2l.to_numpy(encoding(X, training=True)), full)


# --- bad input --------------------------------------------------------------------------------


def _rope(scaling):
    return lambda d2l: d2l.RotaryPositionalEncoding(8, scaling=scaling)


BAD_INPUT = {
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
    "posenc too wide": (lambda d2l: d2l.PositionalEncoding(8)(t(d2l, 2, 5, 9)), ValueError,
                        r"X must have shape \(batch, steps, num_hiddens=8\), got \(2, 5, 9\)"),
    "posenc too narrow": (lambda d2l: d2l.PositionalEncoding(8)(t(d2l, 2, 5, 7)), ValueError,
                          r"X must have shape \(batch, steps, num_hiddens=8\)"),
    "posenc rank": (lambda d2l: d2l.PositionalEncoding(8)(t(d2l, 5, 8)), ValueError, r"X must have shape"),
    "posenc too long": (lambda d2l: d2l.PositionalEncoding(8, max_len=4)(t(d2l, 2, 5, 8)), ValueError,
                        r"X has 5 steps \(axis 1\), more than max_len=4"),
    "posenc dropout": (lambda d2l: d2l.PositionalEncoding(8, dropout=2.0), ValueError,
                       r"dropout must be a number in \[0, 1\), got 2.0"),
    "posenc max_len": (lambda d2l: d2l.PositionalEncoding(8, max_len=-1), ValueError,
                       r"max_len must be a positive integer, got -1"),
    "rope odd head size": (lambda d2l: d2l.RotaryPositionalEncoding(5), ValueError,
                           r"head_size must be even \(rotary encoding rotates pairs of features\), got 5"),
    "rope width": (lambda d2l: d2l.RotaryPositionalEncoding(4)(t(d2l, 2, 3, 6)), ValueError,
                   r"X must have 4 features \(last axis\), the head_size"),
    "rope base": (lambda d2l: d2l.RotaryPositionalEncoding(4, base=-1.0), ValueError,
                  r"base must be a positive number, got -1.0"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- scaled RoPE: Llama 3's and YaRN's frequencies ------------------------------------------------


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
