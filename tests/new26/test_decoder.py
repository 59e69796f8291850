"""generate does the work it promises and every argument does what it says: the cached path runs
the model on one new position per step; temperature, seed and num_tokens against NumPy
computations written here; the model runs in evaluation mode whatever mode it was left in."""

import math

import numpy as np
import pytest

from d2lattn import _checks

# A model whose logits are the same known vector at every position: every row of the embedding is
# ones (RMS 1), the attention and FFN branches are zeroed (W_o = W_down = 0), and W_out maps the
# normalized ones to LOGITS (its first row; RMSNorm's eps changes them by 5e-7).
LOGITS = np.array([1.0, 0.2, -0.5, 0.7, -1.2])
H = 8
ROWS = 2000  # samples per step: frequencies within about 0.01 of the probabilities


def constant_logits_model(d2l):
    model = d2l.TransformerLM(len(LOGITS), H, 2, 1, 8)
    params = {name: np.zeros(p.shape) if name.endswith(("W_o", "W_down")) else p
              for name, p in d2l.get_params(model).items()}
    params["embedding"] = np.ones((len(LOGITS), H))
    params["W_out"] = np.zeros((H, len(LOGITS)))
    params["W_out"][0] = LOGITS
    d2l.set_params(model, params)
    return model


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def sampled_by_hand(probabilities, rows, steps, seed):
    """The documented draw: numpy.random.default_rng(seed), one uniform per row and step, each
    inverted through the cumulative distribution (the first token whose cdf reaches it)."""
    rng, cdf = np.random.default_rng(seed), np.cumsum(probabilities)
    return np.stack([np.minimum(np.searchsorted(cdf, rng.random(rows), side="left"), len(cdf) - 1)
                     for _ in range(steps)], 1)


@pytest.fixture(scope="module")
def constant(d2l):
    return constant_logits_model(d2l)


def test_the_constant_model_has_the_known_logits(d2l, constant):
    logits, _ = constant(d2l.tensor(np.zeros((2, 3), np.int32)), training=False)
    np.testing.assert_allclose(d2l.to_numpy(logits), np.broadcast_to(LOGITS, (2, 3, len(LOGITS))), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sampling_follows_softmax_of_the_logits_over_the_temperature(d2l, constant, temperature):
    prompt = np.zeros((ROWS, 1), np.int32)
    tokens = d2l.generate(constant, prompt, 2, temperature=temperature, seed=5)[:, 1:]   # (ROWS, 2)
    p = softmax(LOGITS / temperature)
    np.testing.assert_array_equal(tokens, sampled_by_hand(p, ROWS, 2, seed=5))
    frequencies = np.bincount(tokens.ravel(), minlength=len(p)) / tokens.size
    np.testing.assert_allclose(frequencies, p, atol=4 * math.sqrt(0.25 / tokens.size))


def test_a_tiny_temperature_is_greedy_and_a_huge_one_uniform(d2l, constant):
    prompt = np.zeros((ROWS, 1), np.int32)
    greedy = d2l.generate(constant, prompt, 2, temperature=0.0)
    assert np.all(greedy[:, 1:] == LOGITS.argmax())
    np.testing.assert_array_equal(d2l.generate(constant, prompt, 2, temperature=1e-3, seed=1), greedy)
    hot = d2l.generate(constant, prompt, 2, temperature=1e4, seed=1)[:, 1:]
    frequencies = np.bincount(hot.ravel(), minlength=len(LOGITS)) / hot.size
    np.testing.assert_allclose(frequencies, 1 / len(LOGITS), atol=4 * math.sqrt(0.25 / hot.size))
    np.testing.assert_array_equal(hot, sampled_by_hand(softmax(LOGITS / 1e4), ROWS, 2, seed=1))


def test_the_seed_chooses_the_draws(d2l, constant):
    prompt = np.zeros((ROWS, 1), np.int32)
    first = d2l.generate(constant, prompt, 2, temperature=1.0, seed=3)
    np.testing.assert_array_equal(d2l.generate(constant, prompt, 2, temperature=1.0, seed=3), first)
    other = d2l.generate(constant, prompt, 2, temperature=1.0, seed=4)
    assert np.mean(other != first) > 0.3  # two independent draws from p agree with probability sum(p ** 2)
    np.testing.assert_array_equal(other[:, 1:], sampled_by_hand(softmax(LOGITS), ROWS, 2, seed=4))


# A random model of sizes no other test uses, so that a compiled backend traces its calls afresh.
SIZES = {"vocab_size": 13, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 12}
PROMPT = np.array([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 5, 8]], dtype=np.int32)   # (3, 4)
NEW = 5


def random_model(d2l, seed, **kwargs):
    model = d2l.TransformerLM(**SIZES, **kwargs)
    rng = np.random.default_rng(seed)
    d2l.set_params(model, {name: np.ones(p.shape) if name.endswith("gamma") else rng.normal(size=p.shape)
                           for name, p in d2l.get_params(model).items()})
    return model


def fed_shapes(d2l, adapter, monkeypatch, model, **kwargs):
    """generate's tokens and the shape of the tokens of every call of the model (its forward
    checks them with _checks.tokens), every call run as Python (adapter.eagerly)."""
    shapes = []

    def recording(shape, *args, **kwargs):
        if args == ("tokens",):  # the language model's check; generate's names the prompt
            shapes.append(tuple(shape))
        return original(shape, *args, **kwargs)

    original = _checks.tokens
    monkeypatch.setattr(_checks, "tokens", recording)
    with adapter.eagerly():
        tokens = d2l.generate(model, PROMPT, NEW, **kwargs)
    monkeypatch.setattr(_checks, "tokens", original)
    return tokens, shapes


def test_the_cache_runs_the_model_on_one_new_position_per_step(d2l, adapter, monkeypatch):
    model = random_model(d2l, 0)
    cached, shapes = fed_shapes(d2l, adapter, monkeypatch, model, use_cache=True)
    b, t0 = PROMPT.shape
    assert shapes == [(b, t0)] + [(b, 1)] * (NEW - 1)           # the prompt once, then each new token alone
    uncached, shapes = fed_shapes(d2l, adapter, monkeypatch, model, use_cache=False)
    assert len(shapes) == NEW                                    # one call per token, each over every position
    assert all(s[0] == b and s[1] >= t0 + i for i, s in enumerate(shapes)), shapes
    np.testing.assert_array_equal(cached, uncached)


def test_num_tokens_is_the_number_of_new_tokens(d2l):
    model = random_model(d2l, 1)
    long = d2l.generate(model, PROMPT, NEW)
    assert long.shape == (3, 4 + NEW)
    np.testing.assert_array_equal(long[:, :4], PROMPT)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 2), long[:, :6])   # greedy: a prefix


@pytest.mark.needs("dropout")
def test_generate_runs_the_model_in_evaluation_mode_whatever_mode_it_was_left_in(d2l, adapter):
    model = random_model(d2l, 2, dropout=0.5)
    expected = adapter.run_left_in_mode(model, False, lambda: d2l.generate(model, PROMPT, NEW))
    for use_cache in (True, False):
        got = adapter.run_left_in_mode(model, True, lambda c=use_cache: d2l.generate(model, PROMPT, NEW, use_cache=c))
        np.testing.assert_array_equal(got, expected)
    # and the mode it was left in would matter: in training the same model gives other logits
    train = adapter.call_in_mode(model, True, d2l.tensor(PROMPT))[0]
    evaluation = adapter.call_in_mode(model, False, d2l.tensor(PROMPT))[0]
    assert not np.allclose(d2l.to_numpy(train), d2l.to_numpy(evaluation), atol=1e-3)


def branch_model(d2l, zeroed, rate):
    """TransformerLM whose logits show one residual branch elementwise: W_out the identity, each
    token's embedding zero in its first half, and the other branch zeroed (its last map 0). One
    head and one position per sequence, so dropout on the attention weights scales a whole row."""
    model = d2l.TransformerLM(H, H, 1, 1, 12, dropout=rate)
    draw = np.random.default_rng(6)
    params = {name: np.ones(p.shape) if name.endswith("gamma") else draw.normal(size=p.shape)
              for name, p in d2l.get_params(model).items()}
    params["embedding"][:, :H // 2] = 0.0
    params["W_out"] = np.eye(H)
    params[f"blocks.0.{zeroed}"] = np.zeros(params[f"blocks.0.{zeroed}"].shape)
    d2l.set_params(model, params)
    return model, params


@pytest.mark.needs("dropout")
@pytest.mark.parametrize("branch, zeroed", [("attention", "ffn.W_down"), ("ffn", "attention.W_o")])
def test_dropout_on_each_residual_branch(d2l, branch, zeroed):
    """The embedding's first half is zero, so there the logits are the branch alone (normalized):
    in training some of those entries of a row are dropped and others kept; in evaluation none is."""
    model, params = branch_model(d2l, zeroed, 0.5)
    tokens = d2l.tensor(np.tile(np.arange(H, dtype=np.int32), 4)[:, None])      # (32, 1)
    plain, _ = branch_model(d2l, zeroed, 0.0)
    evaluation = d2l.to_numpy(model(tokens, training=False)[0])[:, 0, :H // 2]  # (32, H / 2)
    np.testing.assert_allclose(evaluation, d2l.to_numpy(plain(tokens)[0])[:, 0, :H // 2], atol=1e-6)
    assert np.all(np.abs(evaluation) > 1e-4)                                   # the branch reaches every entry
    dropped = np.abs(d2l.to_numpy(model(tokens, training=True)[0])[:, 0, :H // 2]) < 1e-7
    assert np.any(dropped.any(1) & ~dropped.all(1)), f"{branch}: no row with some entries dropped, others kept"
