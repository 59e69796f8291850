"""blocks: LayerNorm, RMSNorm, the feed-forward networks, AddNorm and the transformer blocks on the
backend under test.

Beyond the harness (tests/cases.py): causality, incremental decoding, padding, the norms'
statistics and eps, dropout and the training mode, and bad input.
"""

import numpy as np
import pytest

from tests.modes import dropout_tests
from tests.support import bad_input_test

H, FFN, HEADS = 8, 16, 2


def seeded_module(d2l, name, *args, seed=0):
    """A module with weights drawn by NumPy, so every backend builds the same one."""
    module = getattr(d2l, name)(*args)
    rng = np.random.default_rng(seed)
    d2l.set_params(module, {n: rng.uniform(-0.5, 0.5, p.shape) for n, p in d2l.get_params(module).items()})
    return module


def inputs(*shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape)


def test_decoder_is_causal(d2l):
    """Changing a later token never changes an earlier position's output."""
    block = seeded_module(d2l, "TransformerDecoderBlock", H, FFN, HEADS)
    X, enc = inputs(2, 5, H), inputs(2, 4, H, seed=2)
    lens = d2l.tensor(np.array([4, 2], np.int32))
    before = d2l.to_numpy(block(d2l.tensor(X), d2l.tensor(enc), lens, training=False))
    for t in range(1, 5):
        changed = X.copy()
        changed[:, t:] += inputs(2, 5 - t, H, seed=10 + t)
        after = d2l.to_numpy(block(d2l.tensor(changed), d2l.tensor(enc), lens, training=False))
        np.testing.assert_allclose(after[:, :t], before[:, :t], atol=1e-5)
        assert not np.allclose(after[:, t:], before[:, t:], atol=1e-3)   # later positions did change


def test_incremental_decoding_matches_the_full_pass(d2l):
    block = seeded_module(d2l, "TransformerDecoderBlock", H, FFN, HEADS)
    X, enc = inputs(2, 5, H), d2l.tensor(inputs(2, 4, H, seed=2))
    lens = d2l.tensor(np.array([4, 2], np.int32))
    full = d2l.to_numpy(block(d2l.tensor(X), enc, lens, training=False))
    cache, steps = None, []
    for t in range(5):
        Y, cache = block.step(d2l.tensor(X[:, t:t + 1]), enc, lens, cache, training=False)
        steps.append(d2l.to_numpy(Y))
        assert tuple(cache.shape) == (2, t + 1, H)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_encoder_ignores_padding(d2l):
    """With valid_lens, what stands in the padded positions does not reach the valid ones."""
    block = seeded_module(d2l, "TransformerEncoderBlock", H, FFN, HEADS)
    X = inputs(2, 6, H)
    lens = d2l.tensor(np.array([4, 6], np.int32))
    padded = X.copy()
    padded[0, 4:] = 100.0
    a = d2l.to_numpy(block(d2l.tensor(X), lens, training=False))
    b = d2l.to_numpy(block(d2l.tensor(padded), lens, training=False))
    np.testing.assert_allclose(a[0, :4], b[0, :4], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


def test_layer_norm_standardizes_each_position(d2l):
    X = inputs(3, 4, 10) * 5 + 3
    Y = d2l.to_numpy(d2l.LayerNorm(10)(d2l.tensor(X)))                 # gamma 1, beta 0
    np.testing.assert_allclose(Y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(Y.var(-1), 1, atol=1e-3)              # var / (var + eps)


def _set(d2l, module, **params):
    d2l.set_params(module, params)
    return module


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_layer_norm_eps_on_low_variance_inputs(d2l, eps):
    """At scale 0.01 the variance (1e-4) is close to eps: forgetting eps moves outputs by ~5%."""
    rng = np.random.default_rng(0)
    X = 0.01 * rng.normal(size=(2, 3, 6))
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    norm = _set(d2l, d2l.LayerNorm(6, eps=eps), gamma=gamma, beta=beta)
    mean = X.mean(-1, keepdims=True)
    var = ((X - mean) ** 2).mean(-1, keepdims=True)                      # biased
    want = (X - mean) / np.sqrt(var + eps) * gamma + beta
    np.testing.assert_allclose(d2l.to_numpy(norm(d2l.tensor(X), training=False)), want, atol=2e-5)


def test_rms_norm_eps_on_low_variance_inputs(d2l):
    rng = np.random.default_rng(1)
    X = 0.001 * rng.normal(size=(2, 3, 6))                               # mean square 1e-6 = eps
    gamma = rng.normal(size=6)
    norm = _set(d2l, d2l.RMSNorm(6), gamma=gamma)
    want = X / np.sqrt((X ** 2).mean(-1, keepdims=True) + 1e-6) * gamma
    np.testing.assert_allclose(d2l.to_numpy(norm(d2l.tensor(X), training=False)), want, atol=2e-5)


# --- dropout and the training mode ------------------------------------------------------------

test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused = dropout_tests("blocks")


# --- bad input --------------------------------------------------------------------------------

BAD_INPUT = {
    "layernorm width": (lambda d2l: d2l.LayerNorm(6)(d2l.tensor(inputs(2, 3, 5))), ValueError,
                        r"X must have 6 features \(last axis\), the normalized_size, got shape \(2, 3, 5\)"),
    "layernorm eps": (lambda d2l: d2l.LayerNorm(6, eps=0), ValueError, r"eps must be a positive number, got 0"),
    "rmsnorm eps": (lambda d2l: d2l.RMSNorm(4, eps=0), ValueError, r"eps must be a positive number, got 0"),
    "ffn width": (lambda d2l: d2l.PositionWiseFFN(4, 8, 5)(d2l.tensor(inputs(2, 3, 5))), ValueError,
                  r"X must have 4 features"),
    "swiglu hiddens": (lambda d2l: d2l.SwiGLUFFN(4, 0), ValueError,
                       r"ffn_num_hiddens must be a positive integer, got 0"),
    "encoder block heads": (lambda d2l: d2l.TransformerEncoderBlock(8, 16, 3), ValueError,
                            r"num_hiddens \(8\) must be divisible by num_heads \(3\)"),
    "addnorm dropout": (lambda d2l: d2l.AddNorm(6, dropout=1.5), ValueError,
                        r"dropout must be a number in \[0, 1\), got 1.5"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)
