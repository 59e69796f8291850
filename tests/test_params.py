"""params: get_params, set_params, save_params and load_params on the backend under test.

Canonical names and shapes, strict setting and loading with the same messages on every backend,
and weights in .safetensors files: the round trip, the reference's file loaded here, and this
backend's file left in build/results/ for `python -m tests.crosscheck` to load into the reference.
"""

import numpy as np
import pytest

from d2lattn import checkpoint
from d2lattn import numpy as reference
from tests import harness
from tests.support import random_params as uniform_params

MODULES = {
    "AdditiveAttention": {"query_size": 3, "key_size": 4, "num_hiddens": 5},
    "MultiHeadAttention": {"num_hiddens": 8, "num_heads": 2, "bias": True, "query_size": 3},
    "RMSNorm": {"normalized_size": 6},
    "SwiGLUFFN": {"num_inputs": 4, "ffn_num_hiddens": 6, "ffn_num_outputs": 5},
    "CausalSelfAttention": {"num_hiddens": 12, "num_heads": 6, "num_kv_heads": 2, "bias": True},
    "TransformerLM": {"vocab_size": 7, "num_hiddens": 8, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 6,
                      "num_kv_heads": 1},
}


def random_params(name):
    shapes = reference.get_params(getattr(reference, name)(**MODULES[name]))
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=p.shape).astype(np.float32) for n, p in shapes.items()}


@pytest.mark.parametrize("name", MODULES)
def test_round_trip(d2l, name):
    module, params = getattr(d2l, name)(**MODULES[name]), random_params(name)
    d2l.set_params(module, params)
    got = d2l.get_params(module)
    assert sorted(got) == sorted(params)
    for n in params:
        np.testing.assert_array_equal(got[n], params[n])


def test_canonical_names(d2l):
    names = d2l.get_params(d2l.MultiHeadAttention(8, 2, bias=True, query_size=3))
    assert sorted(names) == ["W_k", "W_o", "W_q", "W_v", "b_k", "b_o", "b_q", "b_v"]
    assert names["W_q"].shape == (3, 8)
    assert {n: p.shape for n, p in d2l.get_params(d2l.AdditiveAttention(3, 4, 5)).items()} == {
        "W_q": (3, 5), "W_k": (4, 5), "w_v": (5, 1)}


@pytest.mark.parametrize("problem, message", [
    ("missing", r"missing parameter\(s\) \['W_k'\]"),
    ("extra", r"unexpected parameter\(s\) \['W_z'\]"),
    ("shape", r"parameter 'W_q' has shape \(5, 5\), expected \(3, 5\)"),
])
def test_set_params_is_strict(d2l, problem, message):
    module, params = d2l.AdditiveAttention(**MODULES["AdditiveAttention"]), random_params("AdditiveAttention")
    if problem == "missing":
        del params["W_k"]
    elif problem == "extra":
        params["W_z"] = np.zeros((3, 5))
    else:
        params["W_q"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=message):
        d2l.set_params(module, params)


def test_grouped_query_shapes(d2l):
    """Key and value maps have num_kv_heads * head_size columns; a CausalSelfAttention has the same parameters."""
    want = {"W_q": (12, 12), "W_k": (5, 4), "W_v": (12, 4), "W_o": (12, 12), "b_q": (12,), "b_k": (4,), "b_v": (4,),
            "b_o": (12,)}
    mha = d2l.MultiHeadAttention(12, 6, bias=True, num_kv_heads=2, key_size=5)
    assert {n: p.shape for n, p in d2l.get_params(mha).items()} == want
    csa = d2l.CausalSelfAttention(12, 6, num_kv_heads=2, bias=True)
    assert {n: p.shape for n, p in d2l.get_params(csa).items()} == {**want, "W_k": (12, 4)}
    assert {n: p.shape for n, p in d2l.get_params(d2l.SwiGLUFFN(4, 6)).items()} == {
        "W_gate": (4, 6), "W_up": (4, 6), "W_down": (6, 4)}
    assert {n: p.shape for n, p in d2l.get_params(d2l.RMSNorm(5)).items()} == {"gamma": (5,)}
    np.testing.assert_array_equal(d2l.get_params(d2l.RMSNorm(5))["gamma"], np.ones(5))
    assert d2l.get_params(d2l.RotaryPositionalEncoding(4)) == {}


@pytest.mark.parametrize("head_size", [6, 2])
def test_heads_of_any_width(d2l, head_size):
    """With head_size, the queries and the output map have num_heads * head_size columns and rows, keys and
    values num_kv_heads * head_size, whatever num_hiddens / num_heads is (9 / 2 need not be whole)."""
    dh = head_size
    want = {"W_q": (9, 2 * dh), "W_k": (9, dh), "W_v": (9, dh), "W_o": (2 * dh, 9), "b_q": (2 * dh,),
            "b_k": (dh,), "b_v": (dh,), "b_o": (9,)}
    mha = d2l.MultiHeadAttention(9, 2, bias=True, num_kv_heads=1, head_size=dh)
    assert {n: p.shape for n, p in d2l.get_params(mha).items()} == want
    csa = d2l.CausalSelfAttention(9, 2, num_kv_heads=1, head_size=dh, bias=True, output_gate=True, qk_norm=True)
    assert {n: p.shape for n, p in d2l.get_params(csa).items()} == {
        **want, "W_gate": (9, 2 * dh), "q_norm.gamma": (dh,), "k_norm.gamma": (dh,)}
    Y, (k, v) = csa(d2l.tensor(np.ones((3, 4, 9))))
    assert tuple(Y.shape) == (3, 4, 9) and tuple(k.shape) == tuple(v.shape) == (3, 1, 4, dh)
    lm = d2l.TransformerLM(5, 9, 2, 1, 4, head_size=dh)
    assert tuple(d2l.get_params(lm)["blocks.0.attention.W_o"].shape) == (2 * dh, 9)


# --- weights in .safetensors files --------------------------------------------------------------

LM = harness.LM_FILE["args"]  # small, with grouped-query heads and a window
# The round trip's model: heads of 4 features, so that RoPE rotates two pairs (with one pair its two
# conventions agree, and a file that swapped them would pass).
WIDER = {**LM, "num_hiddens": 16}


def lm(d2l, seed, args=LM):
    """A TransformerLM with NumPy-drawn weights (the same on every backend)."""
    model = d2l.TransformerLM(**args)
    d2l.set_params(model, uniform_params(reference.TransformerLM(**args), np.random.default_rng(seed), scale=3.0))
    return model


def logits(d2l, model, tokens):
    return d2l.to_numpy(model(d2l.tensor(np.asarray(tokens, np.int32)), training=False)[0])


def test_save_and_load_round_trip(d2l, tmp_path):
    """The file holds float32 (the reference computes in float64) and is backend-free: a fresh model
    and the reference read the same weights and logits back; loading is as strict as set_params,
    naming the same first mismatch (by name) on every backend."""
    model = lm(d2l, seed=12, args=WIDER)
    path = tmp_path / "lm.safetensors"
    d2l.save_params(model, path)
    fresh = d2l.TransformerLM(**WIDER)
    d2l.load_params(fresh, path)
    want, got = d2l.get_params(model), d2l.get_params(fresh)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name].astype(np.float32), err_msg=name)
    tokens = [[1, 2, 3, 4], [4, 3, 2, 1]]
    np.testing.assert_allclose(logits(d2l, fresh, tokens), logits(d2l, model, tokens), atol=1e-5)
    into_reference = reference.TransformerLM(**WIDER)
    reference.load_params(into_reference, path)
    np.testing.assert_allclose(into_reference(np.array(tokens))[0], logits(d2l, model, tokens), atol=1e-5)
    width, vocab = WIDER["num_hiddens"], WIDER["vocab_size"]
    with pytest.raises(ValueError, match=rf"set_params: parameter 'W_out' has shape \({width}, {vocab}\), "
                                         rf"expected \({width}, {vocab + 1}\)"):
        d2l.load_params(d2l.TransformerLM(**{**WIDER, "vocab_size": vocab + 1}), path)
    with pytest.raises(ValueError, match="missing parameter"):
        d2l.load_params(d2l.TransformerLM(**{**WIDER, "num_layers": WIDER["num_layers"] + 1}), path)


@pytest.mark.parametrize("problem, message", [
    ("missing", r"missing parameter\(s\) \['blocks\.1\.ffn\.W_up'\]"),
    ("extra", r"unexpected parameter\(s\) \['blocks\.2\.norm1\.gamma'\]"),
    ("shape", r"parameter 'blocks\.0\.attention\.W_k' has shape \(8, 8\), expected \(8, 4\)"),
])
def test_load_params_is_strict(d2l, tmp_path, problem, message):
    params = uniform_params(reference.TransformerLM(**LM), np.random.default_rng(13))
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
    ref = lm(reference, seed=14)
    path = tmp_path / "reference.safetensors"
    reference.save_params(ref, path)
    ours = d2l.TransformerLM(**LM)
    d2l.load_params(ours, path)
    tokens = harness.LM_FILE["tokens"]
    np.testing.assert_allclose(logits(d2l, ours, tokens), ref(np.array(tokens), training=False)[0], atol=1e-4)


def test_write_a_file_for_crosscheck(d2l):
    """This backend's own initial weights (moved by NumPy noise, so each backend's file differs),
    saved where crosscheck loads them into the reference, with the logits they give here."""
    model = d2l.TransformerLM(**LM)
    rng = np.random.default_rng(15)
    d2l.set_params(model, {n: p + rng.normal(scale=0.1, size=p.shape) for n, p in d2l.get_params(model).items()})
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    path = harness.RESULTS / f"{d2l.BACKEND}.lm.safetensors"
    d2l.save_params(model, path)
    np.save(harness.RESULTS / f"{d2l.BACKEND}.lm-logits.npy", logits(d2l, model, harness.LM_FILE["tokens"]))
    assert sorted(checkpoint.load(path)) == sorted(d2l.get_params(model))
