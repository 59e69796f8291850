"""Decoder-only models on the backend under test: CausalSelfAttention against MultiHeadAttention and
the classic top-left mask bug, TransformerLM's parameters, generation (cached and not, against the
NumPy reference), and weights in .safetensors files: round trip, strictness, the reference's file
loaded here, and this backend's file left in build/results/ for `python -m tests.crosscheck` to load
into the reference."""

import math

import numpy as np
import pytest

from d2lattn import checkpoint
from d2lattn import numpy as reference
from tests import harness

LM = harness.LM_FILE["args"]  # small, with grouped-query heads and a window shorter than the generation


def random_params(module, seed, scale=1.0):
    """Canonical parameters of the reference `module`'s shapes, drawn from NumPy."""
    rng = np.random.default_rng(seed)
    return {n: scale * rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0])
            for n, p in reference.get_params(module).items()}


def models(d2l, seed=0, **changes):
    """(the backend's TransformerLM, the reference's), the same NumPy-drawn weights in both."""
    args = {**LM, **changes}
    ref, ours = reference.TransformerLM(**args), d2l.TransformerLM(**args)
    params = random_params(ref, seed, scale=3.0)  # logits far apart: no near ties for argmax
    reference.set_params(ref, params)
    d2l.set_params(ours, params)
    return ours, ref


def logits(d2l, model, tokens):
    return d2l.to_numpy(model(d2l.tensor(np.asarray(tokens, np.int32)), training=False)[0])


# --- CausalSelfAttention ----------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_without_rope_window_or_groups_it_is_causal_multi_head_attention(d2l, bias):
    args = {"num_hiddens": 8, "num_heads": 2, "bias": bias}
    csa, mha = d2l.CausalSelfAttention(**args, rope_base=None), d2l.MultiHeadAttention(**args)
    params = random_params(reference.MultiHeadAttention(**args), seed=1)
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
    params = random_params(reference.MultiHeadAttention(**args), seed=3)
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
    """Keys and values of every position so far, (b, num_kv_heads, t, head_size), and the attention
    weights of the last call (b, num_heads, T, t + T), also with a window."""
    csa = d2l.CausalSelfAttention(8, 4, num_kv_heads=2, window=2)
    X = d2l.tensor(np.random.default_rng(5).normal(size=(3, 4, 8)))
    _, cache = csa(X[:, :3], training=False)
    Y, (keys, values) = csa(X[:, 3:], cache=cache, training=False)
    assert tuple(keys.shape) == tuple(values.shape) == (3, 2, 4, 2)
    assert tuple(Y.shape) == (3, 1, 8)
    weights = d2l.to_numpy(csa.attention_weights)
    assert weights.shape == (3, 4, 1, 4)
    np.testing.assert_array_equal(weights[..., :2], 0)  # the window: position 3 sees 2 and 3 only


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


def test_logits_and_cache(d2l):
    ours, ref = models(d2l, seed=6)
    tokens = np.random.default_rng(7).integers(0, LM["vocab_size"], (2, 5)).astype(np.int32)
    out, cache = ours(d2l.tensor(tokens), training=False)
    np.testing.assert_allclose(d2l.to_numpy(out), ref(tokens, training=False)[0], atol=1e-4)
    assert len(cache) == LM["num_layers"]
    assert all(tuple(k.shape) == tuple(v.shape) == (2, LM["num_kv_heads"], 5, 2) for k, v in cache)
    step, _ = ours(d2l.tensor(tokens[:, 4:]), cache=ours(d2l.tensor(tokens[:, :4]), training=False)[1],
                   training=False)
    np.testing.assert_allclose(d2l.to_numpy(step)[:, 0], d2l.to_numpy(out)[:, 4], atol=1e-5)


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


def test_generated_tokens_follow_the_logits(d2l):
    """Greedy generation picks each argmax of the full pass over the sequence so far."""
    ours, _ = models(d2l, seed=11)
    out = d2l.generate(ours, [[4, 4]], 5)
    full = logits(d2l, ours, out[:, :-1])                                   # (1, 6, vocab)
    np.testing.assert_array_equal(full[0, 1:].argmax(-1), out[0, 2:])


# --- weights in .safetensors files --------------------------------------------------------------


def test_save_and_load_round_trip(d2l, tmp_path):
    ours, _ = models(d2l, seed=12)
    path = tmp_path / "lm.safetensors"
    d2l.save_params(ours, path)
    fresh = d2l.TransformerLM(**LM)
    d2l.load_params(fresh, path)
    want = d2l.get_params(ours)
    got = d2l.get_params(fresh)
    assert sorted(got) == sorted(want)
    for name in want:  # files hold float32 (the reference computes in float64)
        np.testing.assert_array_equal(got[name], want[name].astype(np.float32))
    tokens = [[1, 2, 3, 4]]
    np.testing.assert_allclose(logits(d2l, fresh, tokens), logits(d2l, ours, tokens), atol=1e-5)


@pytest.mark.parametrize("problem, message", [
    ("missing", r"missing parameter\(s\) \['blocks\.1\.ffn\.W_up'\]"),
    ("extra", r"unexpected parameter\(s\) \['blocks\.2\.norm1\.gamma'\]"),
    ("shape", r"parameter 'blocks\.0\.attention\.W_k' has shape \(8, 8\), expected \(8, 4\)"),
])
def test_load_params_is_strict(d2l, tmp_path, problem, message):
    params = random_params(reference.TransformerLM(**LM), seed=13)
    if problem == "missing":
        del params["blocks.1.ffn.W_up"]
    elif problem == "extra":
        params["blocks.2.norm1.gamma"] = np.ones(8)
    else:
        params["blocks.0.attention.W_k"] = np.zeros((8, 8))
    path = tmp_path / "bad.safetensors"
    checkpoint.save(params, path)
    with pytest.raises(ValueError, match=message):
        d2l.load_params(d2l.TransformerLM(**LM), path)


def test_a_file_written_by_the_reference_loads_here(d2l, tmp_path):
    _, ref = models(reference, seed=14)
    path = tmp_path / "reference.safetensors"
    reference.save_params(ref, path)
    ours = d2l.TransformerLM(**LM)
    d2l.load_params(ours, path)
    tokens = harness.LM_FILE["tokens"]
    np.testing.assert_allclose(logits(d2l, ours, tokens), ref(np.array(tokens), training=False)[0], atol=1e-4)


def test_write_a_file_for_crosscheck(d2l, backend_name):
    """This backend's own initial weights (moved by NumPy noise, so each backend's file differs),
    saved where crosscheck loads them into the reference, with the logits they give here."""
    model = d2l.TransformerLM(**LM)
    rng = np.random.default_rng(15)
    d2l.set_params(model, {n: p + rng.normal(scale=0.1, size=p.shape) for n, p in d2l.get_params(model).items()})
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    path = harness.RESULTS / f"{backend_name}.lm.safetensors"
    d2l.save_params(model, path)
    np.save(harness.RESULTS / f"{backend_name}.lm-logits.npy", logits(d2l, model, harness.LM_FILE["tokens"]))
    assert sorted(checkpoint.load(path)) == sorted(d2l.get_params(model))
