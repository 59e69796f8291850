"""Behaviour of the transformer blocks beyond matching the reference: causality,
incremental decoding, padding, and layer norm's statistics."""

import numpy as np
import pytest

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


@pytest.mark.parametrize("problem, message", [
    ("queries", r"queries must have shape \(batch, queries, query_size\) = \(\?, \?, 3\), got \(2, 3, 4\)"),
    ("keys", r"keys must have shape \(batch, queries, key_size\), one key per query = \(2, 3, 4\), got \(2, 5, 4\)"),
    ("values", r"values must have shape \(batch, num_values, value_size\) = \(2, 5, 2\), got \(2, 6, 2\)"),
])
def test_concat_attention_checks_its_inputs(d2l, problem, message):
    shapes = {"queries": (2, 3, 3), "keys": (2, 3, 4), "values": (2, 5, 2)}
    shapes[problem] = {"queries": (2, 3, 4), "keys": (2, 5, 4), "values": (2, 6, 2)}[problem]
    attention = d2l.ConcatAttention(3, 4, 5, 2, 6)
    with pytest.raises(ValueError, match=message):
        attention(*(d2l.tensor(inputs(*s)) for s in shapes.values()))


@pytest.mark.parametrize("build, message", [
    (lambda d2l: d2l.LayerNorm(6)(d2l.tensor(inputs(2, 3, 5))),
     r"X must have 6 features \(last axis\), the normalized_size, got shape \(2, 3, 5\)"),
    (lambda d2l: d2l.LayerNorm(6, eps=0), r"eps must be a positive number, got 0"),
    (lambda d2l: d2l.PositionWiseFFN(4, 8, 5)(d2l.tensor(inputs(2, 3, 5))), r"X must have 4 features"),
    (lambda d2l: d2l.TransformerEncoderBlock(8, 16, 3), r"num_hiddens \(8\) must be divisible by num_heads \(3\)"),
    (lambda d2l: d2l.AddNorm(6, dropout=1.5), r"dropout must be a number in \[0, 1\), got 1.5"),
])
def test_block_arguments_are_checked(d2l, build, message):
    with pytest.raises(ValueError, match=message):
        build(d2l)
