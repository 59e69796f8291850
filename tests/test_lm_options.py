"""TransformerLM's options from today's open models, and the rolling cache of windowed layers.

Beyond the harness (tests/cases.py, lm-* cases): the tied head is the embedding's transpose and
one parameter; norm_eps reaches every norm; the final soft-cap bounds the logits and is the
identity as the cap grows; per-layer windows and bases act layer by layer (Gemma 3's 5 : 1,
gpt-oss's alternation, Mistral's all-local model, each one call); a windowed layer's cache is a
rolling buffer of window - 1 positions whose outputs are the unbounded cache's for random windows
and pieces, whose size stays the same over a long generation; and bad input.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference
from tests.strategies import PROFILE
from tests.support import bad_input_test, random_params, t

SIZES = {"vocab_size": 11, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 12}
TOKENS = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7, 1, 8, 2, 8, 1, 8, 2]], dtype=np.int32)  # (2, 9)


def models(d2l, seed=0, scale=3.0, **changes):
    """(the backend's TransformerLM, the reference's), the same NumPy-drawn weights in both."""
    args = {**SIZES, **changes}
    ref, ours = reference.TransformerLM(**args), d2l.TransformerLM(**args)
    params = random_params(ref, np.random.default_rng(seed), scale=scale)
    reference.set_params(ref, params)
    d2l.set_params(ours, params)
    return ours, ref


def run(d2l, model, tokens=TOKENS, cache=None):
    logits, cache = model(d2l.tensor(np.asarray(tokens, np.int32)), cache=cache, training=False)
    return d2l.to_numpy(logits), cache


# --- the tied head, the norms' eps, the final soft-cap ----------------------------------------


def test_a_tied_head_is_the_embedding_transpose_and_one_parameter(d2l):
    tied, ref = models(d2l, tie_embeddings=True)
    names = set(d2l.get_params(tied))
    assert "embedding" in names and "W_out" not in names
    assert names | {"W_out"} == set(d2l.get_params(d2l.TransformerLM(**SIZES)))
    params = reference.get_params(ref)
    untied = reference.TransformerLM(**SIZES)
    reference.set_params(untied, {**params, "W_out": params["embedding"].T})
    np.testing.assert_allclose(run(d2l, tied)[0], untied(TOKENS)[0], atol=1e-4)
    # one table: changing the embedding changes the head too
    d2l.set_params(tied, {**params, "embedding": 2 * params["embedding"]})
    reference.set_params(untied, {**params, "embedding": 2 * params["embedding"], "W_out": 2 * params["embedding"].T})
    np.testing.assert_allclose(run(d2l, tied)[0], untied(TOKENS)[0], atol=1e-3)


def test_norm_eps_reaches_every_norm(d2l):
    """A large eps, set once, in the two norms of every block and the final one: each changes the logits."""
    ours, ref = models(d2l, scale=1.0, norm_eps=0.5)
    np.testing.assert_allclose(run(d2l, ours)[0], ref(TOKENS)[0], atol=1e-4)
    for norm in ("blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"):
        one = reference.TransformerLM(**SIZES, norm_eps=0.5)
        reference.set_params(one, reference.get_params(ref))
        module = one
        for part in norm.split("."):
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        module.eps = 1e-6
        want = ref(TOKENS)[0]
        assert np.abs(one(TOKENS)[0] - want).max() > 1e-2 * np.abs(want).max(), f"{norm} does not use norm_eps"


@pytest.mark.parametrize("cap", [0.5, 2.0, 10.0])
def test_the_final_cap_bounds_the_logits_and_keeps_their_order(d2l, cap):
    plain, _ = models(d2l)
    capped, ref = models(d2l, final_logit_cap=cap)
    raw, logits = run(d2l, plain)[0], run(d2l, capped)[0]
    assert np.all(np.abs(logits) < cap)
    np.testing.assert_allclose(logits, cap * np.tanh(raw / cap), atol=1e-5)
    np.testing.assert_allclose(logits, ref(TOKENS)[0], atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(-1), raw.argmax(-1))     # greedy decoding is unchanged


def test_a_huge_cap_is_the_identity(d2l):
    plain, _ = models(d2l)
    capped, _ = models(d2l, final_logit_cap=1e6)
    np.testing.assert_allclose(run(d2l, capped)[0], run(d2l, plain)[0], atol=1e-4)


# --- per-layer windows and bases ---------------------------------------------------------------

PATTERNS = {
    "gemma3 5 local : 1 global": {"num_layers": 6, "window": [3] * 5 + [None], "rope_base": [10000.0] * 5 + [1e6]},
    "gpt-oss alternation": {"num_layers": 4, "window": [2, None, 2, None]},
    "mistral all local": {"num_layers": 2, "window": 3},
    "nope every fourth": {"num_layers": 4, "rope_base": (500.0, 500.0, 500.0, None)},
}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_per_layer_patterns_are_one_constructor_call(d2l, pattern):
    ours, ref = models(d2l, **PATTERNS[pattern])
    np.testing.assert_allclose(run(d2l, ours)[0], ref(TOKENS)[0], atol=1e-4)


def test_each_layer_gets_its_own_window_and_base(d2l):
    """Layer by layer: [2, None] is neither 2 everywhere nor None everywhere, and it equals the
    reference whose blocks were each given their own window by hand."""
    args = {"window": [2, None], "rope_base": [100.0, None]}
    ours, ref = models(d2l, **args)
    logits = run(d2l, ours)[0]
    by_hand = reference.TransformerLM(**SIZES)
    reference.set_params(by_hand, reference.get_params(ref))
    by_hand.blocks[0].attention.window, by_hand.blocks[1].attention.window = 2, None
    by_hand.blocks[0].attention.rope = reference.RotaryPositionalEncoding(4, 100.0)
    by_hand.blocks[1].attention.rope = None
    np.testing.assert_allclose(logits, by_hand(TOKENS)[0], atol=1e-4)
    for same in ({"window": 2, "rope_base": [100.0, None]}, {"window": None, "rope_base": [100.0, None]},
                 {"window": [2, None], "rope_base": 100.0}):
        other = reference.TransformerLM(**SIZES, **same)
        reference.set_params(other, reference.get_params(ref))
        assert np.abs(other(TOKENS)[0] - logits).max() > 1e-3, same


# --- the rolling cache of a windowed layer -----------------------------------------------------


@settings(PROFILE, max_examples=6)
@given(data=st.data())
def test_the_rolling_cache_gives_the_unbounded_outputs(d2l, data):
    """Random windows (shorter and longer than the sequence, one per layer), random pieces: every
    piece's logits are the full pass's, every windowed block's cache keeps max(w - 1, 1) slots and
    the position, and the keys it holds are the last ones of the unbounded cache."""
    windows = data.draw(st.sampled_from([[1, 2], [3, None], [2, 4], [8, 3]]), label="windows")
    cuts = sorted(data.draw(st.sets(st.integers(1, 8), max_size=4), label="split points"))
    ours, ref = models(d2l, seed=data.draw(st.integers(0, 3), label="seed"), window=windows)
    full = run(d2l, ours)[0]                                             # no cache: every key at hand
    pieces, cache = [], None
    for start, stop in zip([0] + cuts, cuts + [TOKENS.shape[1]]):
        out, cache = run(d2l, ours, TOKENS[:, start:stop], cache)
        pieces.append(out)
    np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-4)
    np.testing.assert_allclose(full, ref(TOKENS)[0], atol=1e-4)
    for window, block_cache in zip(windows, cache):
        if window is None:
            assert len(block_cache) == 2 and tuple(block_cache[0].shape) == (2, 2, TOKENS.shape[1], 4)
        else:
            assert len(block_cache) == 3 and int(block_cache[2]) == TOKENS.shape[1]
            assert tuple(block_cache[0].shape) == tuple(block_cache[1].shape) == (2, 2, max(window - 1, 1), 4)


def test_the_buffer_holds_the_last_keys_zeros_before_the_first(d2l):
    """A window of 4 keeps 3 slots: after 2 positions [0, k0, k1], after 5 [k2, k3, k4], the keys of
    the unbounded cache of the same layer (rotated at their positions), oldest first."""
    args = {"num_hiddens": 8, "num_heads": 2}
    ref = reference.CausalSelfAttention(**args)
    params = random_params(ref, np.random.default_rng(1))
    rolling = d2l.CausalSelfAttention(**args, window=4)
    d2l.set_params(rolling, params)
    reference.set_params(ref, params)
    X = np.random.default_rng(2).normal(size=(2, 5, 8))
    _, (keys, values) = ref(X)                                          # every position: (2, 2, 5, 4)
    _, cache = rolling(d2l.tensor(X[:, :2]), training=False)
    assert int(cache[2]) == 2
    np.testing.assert_array_equal(d2l.to_numpy(cache[0])[:, :, 0], 0)
    np.testing.assert_allclose(d2l.to_numpy(cache[0])[:, :, 1:], keys[:, :, :2], atol=1e-5)
    _, cache = rolling(d2l.tensor(X[:, 2:5]), cache=cache, training=False)
    assert int(cache[2]) == 5
    np.testing.assert_allclose(d2l.to_numpy(cache[0]), keys[:, :, 2:], atol=1e-5)
    np.testing.assert_allclose(d2l.to_numpy(cache[1]), values[:, :, 2:], atol=1e-5)


def test_cache_memory_stays_the_same_over_a_long_generation(d2l):
    """Token by token over 64 positions with windows of 4 and 6: the cache's arrays keep their
    sizes from the first token to the last, and the logits of each step are the full pass's."""
    ours, _ = models(d2l, seed=5, window=[4, 6])
    tokens = np.random.default_rng(6).integers(0, SIZES["vocab_size"], (1, 64)).astype(np.int32)
    full = run(d2l, ours, tokens)[0]
    cache, sizes, steps = None, set(), []
    for i in range(tokens.shape[1]):
        out, cache = run(d2l, ours, tokens[:, i:i + 1], cache)
        steps.append(out)
        sizes.add(tuple(tuple(a.shape) for k, v, _ in cache for a in (k, v)))
    assert sizes == {((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4))}
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-4)


def test_generation_past_the_window_gives_the_uncached_tokens(d2l):
    """generate (compiled where the backend compiles, with its fixed-size buffers) over 40 tokens
    with a window of 3 in one layer and none in the other, against the cache-less run and the reference."""
    ours, ref = models(d2l, seed=7, window=[3, None])
    prompt = TOKENS[:, :4]
    cached = d2l.generate(ours, prompt, 40)
    np.testing.assert_array_equal(d2l.generate(ours, prompt, 40, use_cache=False), cached)
    np.testing.assert_array_equal(reference.generate(ref, prompt, 40), cached)
    assert len(set(cached[:, 4:].ravel().tolist())) > 2, "a constant continuation would test little"


# --- bad input ----------------------------------------------------------------------------------

BAD_INPUT = {
    "window list too short": (lambda d2l: d2l.TransformerLM(5, 8, 2, 3, 8, window=[4, None]), ValueError,
                              r"window must be one value or a sequence of one per layer \(num_layers = 3\), "
                              r"got 2 entries"),
    "rope_base list too long": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, rope_base=(1e4, 1e6)), ValueError,
                                r"rope_base must be one value or a sequence of one per layer \(num_layers = 1\), "
                                r"got 2 entries"),
    "window entry": (lambda d2l: d2l.TransformerLM(5, 8, 2, 2, 8, window=[4, 0]), ValueError,
                     r"window must be None or an integer >= 1 \(positions each query sees\), got 0"),
    "final cap zero": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, final_logit_cap=0.0), ValueError,
                       r"final_logit_cap must be a positive number, got 0.0"),
    "final cap negative": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, final_logit_cap=-30), ValueError,
                           r"final_logit_cap must be a positive number, got -30"),
    "norm eps": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, norm_eps=0), ValueError,
                 r"eps must be a positive number, got 0"),
    "tied head has no W_out": (lambda d2l: d2l.set_params(d2l.TransformerLM(5, 8, 2, 1, 8, tie_embeddings=True),
                                                          d2l.get_params(d2l.TransformerLM(5, 8, 2, 1, 8))),
                               ValueError, r"W_out"),
    "rolling cache not a triple": (lambda d2l: d2l.CausalSelfAttention(8, 2, window=3)(
        t(d2l, 2, 1, 8), cache=d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 3, 8))[1]), ValueError,
        r"cache must be None or a tuple \(keys, values, position\) \(the window 3's buffer\), "
        r"each of shape \(batch, num_kv_heads, steps, head_size\) = \(2, 2, 2, 4\)"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)
