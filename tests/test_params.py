"""Portable parameters and constructor checks: the same rules and messages on every backend."""

import numpy as np
import pytest

from d2lattn import numpy as reference

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


def test_heads_must_divide_hiddens(d2l):
    with pytest.raises(ValueError, match=r"num_hiddens \(10\) must be divisible by num_heads \(3\)"):
        d2l.MultiHeadAttention(10, 3)


@pytest.mark.parametrize("build, message", [
    (lambda d2l: d2l.MultiHeadAttention(0, 1), "num_hiddens must be a positive integer, got 0"),
    (lambda d2l: d2l.AdditiveAttention(3, 4.5, 5), "key_size must be a positive integer, got 4.5"),
    (lambda d2l: d2l.DotProductAttention(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (lambda d2l: d2l.PositionalEncoding(8, max_len=-1), "max_len must be a positive integer, got -1"),
    (lambda d2l: d2l.RMSNorm(4, eps=0), "eps must be a positive number, got 0"),
    (lambda d2l: d2l.SwiGLUFFN(4, 0), "ffn_num_hiddens must be a positive integer, got 0"),
    (lambda d2l: d2l.RotaryPositionalEncoding(4, base=-1.0), "base must be a positive number, got -1.0"),
    (lambda d2l: d2l.CausalSelfAttention(8, 2, rope_base=0.0), "rope_base must be a positive number, got 0.0"),
    (lambda d2l: d2l.TransformerLM(0, 8, 2, 1, 8), "vocab_size must be a positive integer, got 0"),
    (lambda d2l: d2l.TransformerLM(5, 8, 2, 0, 8), "num_layers must be a positive integer, got 0"),
])
def test_constructor_arguments_are_checked(d2l, build, message):
    with pytest.raises(ValueError, match=message):
        build(d2l)


@pytest.mark.parametrize("num_hiddens", [32, 33])
def test_positional_encoding_table(d2l, num_hiddens):
    """The whole table, to max_len 1000 (large angles), against the float64 reference."""
    ours = d2l.to_numpy(d2l.PositionalEncoding(num_hiddens).P)
    want = reference.PositionalEncoding(num_hiddens).P
    assert ours.shape == (1, 1000, num_hiddens)
    np.testing.assert_allclose(ours, want, atol=1e-5)


def test_causal_mask(d2l):
    np.testing.assert_array_equal(d2l.to_numpy(d2l.causal_mask(3, 4)),
                                  [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert d2l.to_numpy(d2l.causal_mask(2)).dtype == bool


def test_tensor_helpers_dtypes(d2l, backend_name):
    """The helpers' dtypes are the same everywhere (the reference computes in float64)."""
    from d2lattn._checks import dtype_name

    floats = "float64" if backend_name == "numpy" else "float32"
    assert dtype_name(d2l.arange(5).dtype) == "int32"
    assert dtype_name(d2l.arange(0.0, 1.0, 0.25).dtype) == floats
    assert dtype_name(d2l.tensor([1.5, 2.0]).dtype) == floats
    assert dtype_name(d2l.normal((2, 3), seed=0).dtype) == floats
    np.testing.assert_array_equal(d2l.to_numpy(d2l.normal((2, 3), seed=7)),
                                  np.random.default_rng(7).normal(size=(2, 3)).astype(np.float32))
