"""The array-making helpers of modern attention on the backend under test, against the reference
(checked by hand in tests/test_reference.py): causal masks with offsets and windows, ALiBi slopes
and biases, and the two RoPE conventions, which differ by a permutation of the features."""

import itertools

import numpy as np
import pytest

from d2lattn import numpy as reference
from d2lattn._checks import dtype_name


@pytest.mark.parametrize("q, k", [(1, 1), (3, 3), (2, 5), (5, 2)])
def test_causal_mask_offsets_and_windows(d2l, q, k):
    for offset, window in itertools.product([None, -3, -1, 0, 1, 2, 4], [None, 1, 2, 3, 9]):
        kwargs = {"window": window} if offset is None else {"offset": offset, "window": window}
        mask = d2l.causal_mask(q, k, **kwargs)
        assert dtype_name(mask.dtype) == "bool", kwargs
        np.testing.assert_array_equal(d2l.to_numpy(mask), reference.causal_mask(q, k, **kwargs), err_msg=str(kwargs))
    np.testing.assert_array_equal(d2l.to_numpy(d2l.causal_mask(4, offset=1)), reference.causal_mask(4, offset=1))


def floats(backend_name):
    return "float64" if backend_name == "numpy" else "float32"  # the reference computes in float64


def test_alibi_slopes(d2l, backend_name):
    for n in range(1, 13):  # powers of two and the in-between rule
        slopes = d2l.alibi_slopes(n)
        assert dtype_name(slopes.dtype) == floats(backend_name)
        np.testing.assert_allclose(d2l.to_numpy(slopes), reference.alibi_slopes(n), rtol=1e-6, err_msg=f"n={n}")


@pytest.mark.parametrize("heads, q, k, offset", [(4, 3, None, 0), (3, 2, 5, 3), (6, 4, 4, -2), (1, 1, 7, 6)])
def test_alibi_bias(d2l, backend_name, heads, q, k, offset):
    bias = d2l.alibi_bias(heads, q, k, offset=offset)
    assert dtype_name(bias.dtype) == floats(backend_name)
    np.testing.assert_allclose(d2l.to_numpy(bias), reference.alibi_bias(heads, q, k, offset=offset), rtol=1e-6)


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
