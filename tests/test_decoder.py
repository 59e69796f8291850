"""decoder: CausalSelfAttention, TransformerLM and generate on the backend under test.

Beyond the harness (tests/cases.py): CausalSelfAttention against MultiHeadAttention and the
classic top-left mask bug, the cache (random pieces equal the full pass), partial RoPE and NoPE
layers (the cached keys rotated on their first rope_fraction features only), TransformerLM's
parameters, logits and cache, generation (cached and not, greedy and sampled, against the NumPy
reference), dropout and the training mode, and bad input. Weights in files are in
tests/test_params.py, training in tests/test_train.py.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from d2lattn import _checks
from d2lattn import numpy as reference
from tests import harness
from tests.modes import dropout_tests
from tests.strategies import PROFILE
from tests.support import bad_input_test, ints, portable_lm_init, random_params, t

LM = harness.LM_FILE["args"]  # small, with grouped-query heads and a window shorter than the generation
# A model for the generation tests: grouped-query heads and a sliding window shorter than the text.
SMALL = {"vocab_size": 11, "num_hiddens": 16, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 24,
         "num_kv_heads": 2, "window": 4}
PROMPT = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], dtype=np.int32)


def models(d2l, seed=0, **changes):
    """(the backend's TransformerLM, the reference's), the same NumPy-drawn weights in both."""
    args = {**LM, **changes}
    ref, ours = reference.TransformerLM(**args), d2l.TransformerLM(**args)
    params = random_params(ref, np.random.default_rng(seed), scale=3.0)  # logits far apart: no near ties for argmax
    reference.set_params(ref, params)
    d2l.set_params(ours, params)
    return ours, ref


def small(d2l, seed=0):
    """A small model on the backend and the reference's copy, with the same random weights; the
    queries and keys scaled up so that attention is sharp and where it looks changes the tokens."""
    model = d2l.TransformerLM(**SMALL)
    params = portable_lm_init(d2l, model, seed)
    params = {n: p * 4 if n.endswith(("W_q", "W_k")) else p for n, p in params.items()}
    d2l.set_params(model, params)
    ref = reference.TransformerLM(**SMALL)
    reference.set_params(ref, params)
    return model, ref


def logits(d2l, model, tokens):
    return d2l.to_numpy(model(d2l.tensor(np.asarray(tokens, np.int32)), training=False)[0])


# --- CausalSelfAttention ----------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_without_rope_window_or_groups_it_is_causal_multi_head_attention(d2l, bias):
    args = {"num_hiddens": 8, "num_heads": 2, "bias": bias}
    csa, mha = d2l.CausalSelfAttention(**args, rope_base=None), d2l.MultiHeadAttention(**args)
    params = random_params(reference.MultiHeadAttention(**args), np.random.default_rng(1))
    d2l.set_params(csa, params)
    d2l.set_params(mha, params)
    X = d2l.tensor(np.random.default_rng(2).normal(size=(2, 5, 8)))
    Y, _ = csa(X, training=False)
    want = mha(X, X, X, mask=d2l.causal_mask(5), training=False)
    np.testing.assert_allclose(d2l.to_numpy(Y), d2l.to_numpy(want), atol=1e-6)
    np.testing.assert_allclose(d2l.to_numpy(csa.attention_weights), d2l.to_numpy(mha.attention_weights), atol=1e-6)


def test_continuing_queries_need_the_offset(d2l):
    """Queries that continue a cache sit at positions t, t + 1, ...: the top-left causal mask
    (offset 0) lets them see only the first keys and gives other outputs than the cache;
    causal_mask(T, t + T, offset=t), the lower-right alignment, gives the cached outputs."""
    args, t, T = {"num_hiddens": 8, "num_heads": 2}, 3, 2
    csa, mha = d2l.CausalSelfAttention(**args, rope_base=None), d2l.MultiHeadAttention(**args)
    params = random_params(reference.MultiHeadAttention(**args), np.random.default_rng(3))
    d2l.set_params(csa, params)
    d2l.set_params(mha, params)
    X = d2l.tensor(np.random.default_rng(4).normal(size=(2, t + T, 8)))
    _, cache = csa(X[:, :t], training=False)
    Y, _ = csa(X[:, t:], cache=cache, training=False)
    Y = d2l.to_numpy(Y)
    new = X[:, t:]

    def attend(mask):
        return d2l.to_numpy(mha(new, X, X, mask=mask, training=False))

    top_left = attend(d2l.causal_mask(T, t + T))
    assert np.abs(top_left - Y).max() > 1e-2, "the classic bug should show: top-left mask on continuing queries"
    np.testing.assert_allclose(attend(d2l.causal_mask(T, t + T, offset=t)), Y, atol=1e-6)


def test_cache_holds_every_position(d2l):
    """Without a window: keys and values of every position so far, (b, num_kv_heads, t, head_size),
    and the attention weights of the last call (b, num_heads, T, t + T)."""
    csa = d2l.CausalSelfAttention(8, 4, num_kv_heads=2, rope_base=None)
    X = d2l.tensor(np.random.default_rng(5).normal(size=(3, 4, 8)))
    _, cache = csa(X[:, :3], training=False)
    Y, (keys, values) = csa(X[:, 3:], cache=cache, training=False)
    assert tuple(keys.shape) == tuple(values.shape) == (3, 2, 4, 2)
    assert tuple(Y.shape) == (3, 1, 8)
    weights = d2l.to_numpy(csa.attention_weights)
    assert weights.shape == (3, 4, 1, 4)
    assert np.all(weights > 0)  # position 3 sees every position


@PROFILE
@given(data=st.data())
def test_cached_pieces_equal_the_full_pass(d2l, data):
    """CausalSelfAttention fed a sequence in pieces (random split points), the cache passed on, gives the
    full pass's outputs, its cache, and the full pass's attention rows for the last piece."""
    # (num_kv_heads, group, head size) and (b, T) from a few of each (tests/strategies.py: few shapes)
    kv, group, dh = data.draw(st.sampled_from([(1, 1, 2), (2, 3, 4), (1, 2, 2)]), label="num_kv_heads, group, dh")
    heads, (b, T) = kv * group, data.draw(st.sampled_from([(1, 1), (2, 3), (1, 5)]), label="b, T")
    args = {"num_hiddens": heads * dh, "num_heads": heads, "num_kv_heads": kv,
            "window": data.draw(st.none() | st.integers(1, T + 1), label="window"),
            "rope_base": data.draw(st.sampled_from([10000.0, 100.0, None]), label="rope_base"),
            "bias": data.draw(st.booleans(), label="bias")}
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1)), label="split points")) if T > 1 else []
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    ref = reference.CausalSelfAttention(**args)
    params = random_params(ref, rng)
    reference.set_params(ref, params)
    csa = d2l.CausalSelfAttention(**args)
    d2l.set_params(csa, params)
    X = rng.normal(size=(b, T, heads * dh))
    want, want_cache = ref(X, training=False)
    full, cache = csa(d2l.tensor(X), training=False)
    full, full_weights = d2l.to_numpy(full), d2l.to_numpy(csa.attention_weights)
    np.testing.assert_allclose(full, want, atol=1e-5)
    for ours, theirs in zip(cache, want_cache):
        np.testing.assert_allclose(d2l.to_numpy(ours), theirs, atol=1e-5)
    outs, cache = [], None
    for start, stop in zip([0] + cuts, cuts + [T]):
        out, cache = csa(d2l.tensor(X[:, start:stop]), cache=cache, training=False)
        outs.append(d2l.to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5)
    for ours, theirs in zip(cache, want_cache):
        np.testing.assert_allclose(d2l.to_numpy(ours), theirs, atol=1e-5)
    last = full_weights[:, :, T - outs[-1].shape[1]:]                 # the full pass's rows of the last piece
    if args["window"] is not None and cuts:                           # over the buffer's slots, then the piece
        slots = max(args["window"] - 1, 1)
        keys = start - slots + np.arange(slots + T - start)           # the positions of those keys
        last = np.where(keys >= 0, last[..., np.maximum(keys, 0)], 0.0)  # the slots before position 0: no weight
    np.testing.assert_allclose(d2l.to_numpy(csa.attention_weights), last, atol=1e-5)


# --- TransformerLM --------------------------------------------------------------------------


def test_parameter_names_and_shapes(d2l):
    model = d2l.TransformerLM(11, 8, 4, 2, 12, num_kv_heads=2)
    shapes = {n: tuple(p.shape) for n, p in d2l.get_params(model).items()}
    want = {"embedding": (11, 8), "norm.gamma": (8,), "W_out": (8, 11)}
    for i in range(2):
        want.update({f"blocks.{i}.norm1.gamma": (8,), f"blocks.{i}.norm2.gamma": (8,),
                     f"blocks.{i}.attention.W_q": (8, 8), f"blocks.{i}.attention.W_k": (8, 4),  # 2 kv heads of 2
                     f"blocks.{i}.attention.W_v": (8, 4), f"blocks.{i}.attention.W_o": (8, 8),
                     f"blocks.{i}.ffn.W_gate": (8, 12), f"blocks.{i}.ffn.W_up": (8, 12),
                     f"blocks.{i}.ffn.W_down": (12, 8)})
    assert shapes == want
    mqa = d2l.get_params(d2l.TransformerLM(11, 8, 4, 1, 12, num_kv_heads=1))
    assert mqa["blocks.0.attention.W_k"].shape == mqa["blocks.0.attention.W_v"].shape == (8, 2)


def test_logits_and_cached_pieces(d2l):
    """The logits are the reference's; the cache of every block is its window's rolling buffer (the
    last 3 positions of a window of 4, and the position); the tokens fed in pieces (a prefill, then
    pieces of one and of several tokens) give the logits of one pass."""
    model, ref = small(d2l, seed=2)
    tokens = np.random.default_rng(3).integers(0, SMALL["vocab_size"], (2, 9)).astype(np.int32)
    full, cache = model(d2l.tensor(tokens), training=False)
    full = d2l.to_numpy(full)
    np.testing.assert_allclose(full, ref(tokens, training=False)[0], atol=1e-4)
    head_size = SMALL["num_hiddens"] // SMALL["num_heads"]
    assert len(cache) == SMALL["num_layers"]
    buffer = (2, SMALL["num_kv_heads"], SMALL["window"] - 1, head_size)
    assert all(tuple(k.shape) == tuple(v.shape) == buffer and int(p) == 9 for k, v, p in cache)
    pieces, cache, start = [], None, 0
    for size in (4, 1, 3, 1):
        out, cache = model(d2l.tensor(tokens[:, start:start + size]), cache=cache, training=False)
        pieces.append(d2l.to_numpy(out))
        start += size
    np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)
    assert all(tuple(k.shape) == tuple(v.shape) == buffer and int(p) == 9 for k, v, p in cache)


# --- generate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate(d2l, temperature):
    """The prompt kept, NumPy ints (b, T0 + n); the same tokens with and without the cache and as
    the NumPy reference with the same weights, greedy and sampled with a seed."""
    ours, ref = models(d2l, seed=8)
    prompt = [[1, 5, 2], [7, 0, 3]]
    out = d2l.generate(ours, prompt, 8, temperature=temperature, seed=9)
    assert isinstance(out, np.ndarray) and np.issubdtype(out.dtype, np.integer)
    assert out.shape == (2, 3 + 8)
    np.testing.assert_array_equal(out[:, :3], prompt)
    assert ((0 <= out) & (out < LM["vocab_size"])).all()
    np.testing.assert_array_equal(d2l.generate(ours, np.array(prompt), 8, use_cache=False, temperature=temperature,
                                               seed=9), out)
    np.testing.assert_array_equal(reference.generate(ref, prompt, 8, temperature=temperature, seed=9), out)
    if temperature:
        other = d2l.generate(ours, prompt, 8, temperature=temperature, seed=10)
        assert (other != out).any(), "a different seed should draw other tokens"


def test_generate_with_and_without_cache_gives_the_same_tokens(d2l):
    """With sharp attention and the window of 4 sliding over 14 positions of cache."""
    model, ref = small(d2l, seed=1)
    cached = d2l.generate(model, PROMPT, 9)
    assert isinstance(cached, np.ndarray) and cached.shape == (2, 14) and cached.dtype.kind == "i"
    np.testing.assert_array_equal(cached[:, :5], PROMPT)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 9, use_cache=False), cached)
    np.testing.assert_array_equal(reference.generate(ref, PROMPT, 9), cached)  # the same as the reference
    assert len(set(cached[:, 5:].ravel().tolist())) > 1, "a constant continuation would test little"


def test_sampled_generation_is_deterministic_by_seed(d2l):
    model, ref = small(d2l, seed=4)
    first = d2l.generate(model, PROMPT, 8, temperature=1.5, seed=7)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 8, temperature=1.5, seed=7), first)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 8, temperature=1.5, seed=7, use_cache=False), first)
    np.testing.assert_array_equal(reference.generate(ref, PROMPT, 8, temperature=1.5, seed=7), first)
    assert not np.array_equal(d2l.generate(model, PROMPT, 8, temperature=1.5, seed=8), first)
    assert not np.array_equal(d2l.generate(model, PROMPT, 8), first)  # sampled, not greedy


def test_generated_tokens_follow_the_logits(d2l):
    """Greedy generation picks each argmax of the full pass over the sequence so far."""
    ours, _ = models(d2l, seed=11)
    out = d2l.generate(ours, [[4, 4]], 5)
    full = logits(d2l, ours, out[:, :-1])                                   # (1, 6, vocab)
    np.testing.assert_array_equal(full[0, 1:].argmax(-1), out[0, 2:])


# --- dropout and the training mode ------------------------------------------------------------

test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused = dropout_tests("decoder")


# --- bad input --------------------------------------------------------------------------------

BAD_INPUT = {
    "odd rotated features": (lambda d2l: d2l.CausalSelfAttention(8, 2, rope_fraction=0.25), ValueError,
                             r"rope_fraction \* head_size must be an even whole number of features \(rotary "
                             r"encoding rotates pairs\), got 0.25 \* 4 = 1"),
    "rope_fraction above 1": (lambda d2l: d2l.CausalSelfAttention(8, 2, rope_fraction=1.5), ValueError,
                              r"rope_fraction must be a number in \(0, 1\], got 1.5"),
    "model rope_scaling": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, rope_scaling={"type": "linear"}), ValueError,
                           r"scaling must be None or a dict with 'type' one of 'llama3', 'yarn', got 'linear'"),
    "logit_cap zero": (lambda d2l: d2l.CausalSelfAttention(8, 2, logit_cap=0), ValueError,
                       r"logit_cap must be None or a positive number \(scores become cap \* tanh\(scores / cap\)\), "
                       r"got 0"),
    "model logit_cap negative": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, logit_cap=-1.0), ValueError,
                                 r"logit_cap must be None or a positive number .* got -1.0"),
    "csa kv heads not dividing": (lambda d2l: d2l.CausalSelfAttention(12, 6, num_kv_heads=4), ValueError,
                                  r"num_kv_heads \(4\) must divide num_heads \(6\)"),
    "csa rope odd head size": (lambda d2l: d2l.CausalSelfAttention(6, 2)(t(d2l, 2, 3, 6)), ValueError,
                               r"head_size must be even \(rotary encoding rotates pairs of features\), got 3"),
    "csa head_size zero": (lambda d2l: d2l.CausalSelfAttention(8, 2, head_size=0), ValueError,
                           r"head_size must be a positive integer, got 0"),
    "mha head_size float": (lambda d2l: d2l.MultiHeadAttention(8, 2, head_size=4.0), ValueError,
                            r"head_size must be a positive integer, got 4.0"),
    "lm head_size odd with rope": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, head_size=3), ValueError,
                                   r"head_size must be even \(rotary encoding rotates pairs of features\), got 3"),
    "csa heads not dividing": (lambda d2l: d2l.CausalSelfAttention(9, 2), ValueError,
                               r"num_hiddens \(9\) must be divisible by num_heads \(2\)"),
    "csa rope base": (lambda d2l: d2l.CausalSelfAttention(8, 2, rope_base=0.0), ValueError,
                      r"rope_base must be a positive number, got 0.0"),
    "window zero": (lambda d2l: d2l.CausalSelfAttention(8, 2, window=0), ValueError,
                    r"window must be None or an integer >= 1 \(positions each query sees\), got 0"),
    "lm window float": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8, window=2.0), ValueError,
                        r"window must be None or an integer >= 1 \(positions each query sees\), got 2.0"),
    "cache from another layer": (lambda d2l: d2l.CausalSelfAttention(8, 2)(
        t(d2l, 2, 1, 8), cache=d2l.CausalSelfAttention(8, 4, num_kv_heads=2)(t(d2l, 2, 3, 8))[1]), ValueError,
        r"cache must hold keys and values of shape \(batch, num_kv_heads, steps, head_size\) = \(2, 2, t, 4\), "
        r"got \(2, 2, 3, 2\) and \(2, 2, 3, 2\); was it made by a layer of another shape\?"),
    "cache of another batch": (lambda d2l: d2l.CausalSelfAttention(8, 2)(
        t(d2l, 3, 1, 8), cache=d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 3, 8))[1]), ValueError,
        r"cache must hold keys and values of shape \(batch, num_kv_heads, steps, head_size\) = \(3, 2, t, 4\)"),
    "cache not a pair": (lambda d2l: d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 1, 8), cache=t(d2l, 2, 2, 3, 4)),
                         ValueError, r"cache must be None or a tuple \(keys, values\), each of shape"),
    "csa width": (lambda d2l: d2l.CausalSelfAttention(8, 2)(t(d2l, 2, 3, 6)), ValueError,
                  r"X must have shape \(batch, steps, num_hiddens=8\), got \(2, 3, 6\)"),
    "csa rank": (lambda d2l: d2l.CausalSelfAttention(8, 2)(t(d2l, 3, 8)), ValueError,
                 r"X must have shape \(batch, steps, num_hiddens=8\), got \(3, 8\)"),
    "lm vocab size": (lambda d2l: d2l.TransformerLM(0, 8, 2, 1, 8), ValueError,
                      r"vocab_size must be a positive integer, got 0"),
    "lm layers": (lambda d2l: d2l.TransformerLM(5, 8, 2, 0, 8), ValueError,
                  r"num_layers must be a positive integer, got 0"),
    "lm tokens rank": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8)(ints(d2l, 1, 2, 3)), ValueError,
                       r"tokens must be token ids of shape \(batch, steps\), got \(3,\)"),
    "lm tokens rank 3": (lambda d2l: d2l.TransformerLM(5, 8, 2, 1, 8)(d2l.tensor(np.ones((2, 3, 1), np.int32))),
                         ValueError, r"tokens must be token ids of shape \(batch, steps\), got \(2, 3, 1\)"),
    "lm cache length": (lambda d2l: d2l.TransformerLM(5, 8, 2, 2, 8)(
        ints(d2l, [1, 2]), cache=d2l.TransformerLM(5, 8, 2, 1, 8)(ints(d2l, [1, 2]))[1]), ValueError,
        r"cache must be None or a list with one \(keys, values\) per block \(2, num_layers\), got 1 entries"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- the open-model options: partial RoPE (GPT-NeoX, Qwen3-Next) and NoPE layers -------------


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


# --- generate: the work of the cache, every argument, evaluation mode, dropout per branch ---------
# generate does the work it promises and every argument does what it says: the cached path runs
# the model on one new position per step; temperature, seed and num_tokens against NumPy
# computations written here; the model runs in evaluation mode whatever mode it was left in.


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
PROMPT_OF_3 = np.array([[3, 1, 4, 1], [5, 9, 2, 6], [5, 3, 5, 8]], dtype=np.int32)   # (3, 4)
NEW = 5


def random_model(d2l, seed, **kwargs):
    model = d2l.TransformerLM(**SIZES, **kwargs)
    rng = np.random.default_rng(seed)
    d2l.set_params(model, {name: np.ones(p.shape) if name.endswith("gamma") else rng.normal(size=p.shape)
                           for name, p in d2l.get_params(model).items()})
    return model


def fed_shapes(d2l, adapter, monkeypatch, model, **kwargs):
    """generate's tokens and the shape of the tokens of every call of the model (its forward
    checks them with _checks.check_tokens), every call run as Python (adapter.eagerly)."""
    shapes = []

    def recording(shape, *args, **kwargs):
        if args == ("tokens",):  # the language model's check; generate's names the prompt
            shapes.append(tuple(shape))
        return original(shape, *args, **kwargs)

    original = _checks.check_tokens
    monkeypatch.setattr(_checks, "check_tokens", recording)
    with adapter.eagerly():
        tokens = d2l.generate(model, PROMPT_OF_3, NEW, **kwargs)
    monkeypatch.setattr(_checks, "check_tokens", original)
    return tokens, shapes


def test_the_cache_runs_the_model_on_one_new_position_per_step(d2l, adapter, monkeypatch):
    model = random_model(d2l, 0)
    cached, shapes = fed_shapes(d2l, adapter, monkeypatch, model, use_cache=True)
    b, t0 = PROMPT_OF_3.shape
    assert shapes == [(b, t0)] + [(b, 1)] * (NEW - 1)           # the prompt once, then each new token alone
    uncached, shapes = fed_shapes(d2l, adapter, monkeypatch, model, use_cache=False)
    assert len(shapes) == NEW                                    # one call per token, each over every position
    assert all(s[0] == b and s[1] >= t0 + i for i, s in enumerate(shapes)), shapes
    np.testing.assert_array_equal(cached, uncached)


def test_num_tokens_is_the_number_of_new_tokens(d2l):
    model = random_model(d2l, 1)
    long = d2l.generate(model, PROMPT_OF_3, NEW)
    assert long.shape == (3, 4 + NEW)
    np.testing.assert_array_equal(long[:, :4], PROMPT_OF_3)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT_OF_3, 2), long[:, :6])   # greedy: a prefix


@pytest.mark.needs("dropout")
def test_generate_runs_the_model_in_evaluation_mode_whatever_mode_it_was_left_in(d2l, adapter):
    model = random_model(d2l, 2, dropout=0.5)
    expected = adapter.run_left_in_mode(model, False,
                                        lambda: d2l.generate(model, PROMPT_OF_3, NEW))
    for use_cache in (True, False):
        got = adapter.run_left_in_mode(model, True,
                                       lambda c=use_cache: d2l.generate(model, PROMPT_OF_3, NEW, use_cache=c))
        np.testing.assert_array_equal(got, expected)
    # and the mode it was left in would matter: in training the same model gives other logits
    train = adapter.call_in_mode(model, True, d2l.tensor(PROMPT_OF_3))[0]
    evaluation = adapter.call_in_mode(model, False, d2l.tensor(PROMPT_OF_3))[0]
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
