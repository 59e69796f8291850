"""ops: the tensor helpers, masked_softmax, causal_mask and valid lengths, on the backend under test.

Beyond the harness (tests/cases.py): the helpers' dtypes, causal masks with offsets and windows,
random masked_softmax calls against the reference, lengths written the framework's own way,
numbers at the edges (huge logits, half precision, empty rows) and bad input.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from d2lattn import _backend, _checks
from d2lattn import numpy as reference
from tests.strategies import PROFILE, agree, calls
from tests.support import bad_input_test, ints, t

# --- the tensor helpers -----------------------------------------------------------------------


def test_tensor_helpers_dtypes(d2l):
    """The helpers' dtypes are the same everywhere (the reference computes in float64)."""
    floats = _backend.FLOAT_DTYPE[d2l.BACKEND]
    assert _checks.dtype_name(d2l.arange(5).dtype) == "int32"
    assert _checks.dtype_name(d2l.arange(0.0, 1.0, 0.25).dtype) == floats
    assert _checks.dtype_name(d2l.tensor([1.5, 2.0]).dtype) == floats
    assert _checks.dtype_name(d2l.normal((2, 3), seed=0).dtype) == floats
    np.testing.assert_array_equal(d2l.to_numpy(d2l.normal((2, 3), seed=7)),
                                  np.random.default_rng(7).normal(size=(2, 3)).astype(np.float32))


def test_where_and_take_are_numpys(d2l):
    """The two helpers a mask_mod or score_mod computes with, on broadcast index arrays as the mods get
    them: where with a Python number on either side, and take with one index array per leading axis,
    against NumPy's where and fancy indexing."""
    rng = np.random.default_rng(3)
    nq, nk = np.arange(3, dtype=np.int32)[:, None], np.arange(4, dtype=np.int32)[None]   # (3, 1), (1, 4)
    q, k = d2l.tensor(nq), d2l.tensor(nk)
    np.testing.assert_array_equal(d2l.to_numpy(d2l.where(q >= k, q - k, k - q)), np.where(nq >= nk, nq - nk, nk - nq))
    scores = rng.normal(size=(3, 4))
    np.testing.assert_allclose(d2l.to_numpy(d2l.where(q >= k, d2l.tensor(scores), -5.0)),
                               np.where(nq >= nk, scores, -5.0), rtol=1e-6)
    np.testing.assert_allclose(d2l.to_numpy(d2l.where(q >= k, 0.5, d2l.tensor(scores))),
                               np.where(nq >= nk, 0.5, scores), rtol=1e-6)
    table, nb = rng.normal(size=(2, 5)), np.array([[0], [1]], np.int32)                # (2, 5), (2, 1)
    ni = np.array([[4, 0, 2], [1, 3, 3]], np.int32)                                    # (2, 3)
    np.testing.assert_allclose(d2l.to_numpy(d2l.take(d2l.tensor(table), d2l.tensor(nb), d2l.tensor(ni))),
                               table[nb, ni], rtol=1e-6)
    np.testing.assert_allclose(d2l.to_numpy(d2l.take(d2l.tensor(table[0]), d2l.tensor(ni))), table[0][ni], rtol=1e-6)


# --- causal_mask ------------------------------------------------------------------------------


def test_causal_mask_by_hand(d2l):
    np.testing.assert_array_equal(d2l.to_numpy(d2l.causal_mask(3, 4)),
                                  [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert d2l.to_numpy(d2l.causal_mask(2)).dtype == bool


@pytest.mark.parametrize("q, k", [(1, 1), (3, 3), (2, 5), (5, 2)])
def test_causal_mask_offsets_and_windows(d2l, q, k):
    """Against the reference (checked by hand in tests/test_oracles.py)."""
    for offset, window in itertools.product([None, -3, -1, 0, 1, 2, 4], [None, 1, 2, 3, 9]):
        kwargs = {"window": window} if offset is None else {"offset": offset, "window": window}
        mask = d2l.causal_mask(q, k, **kwargs)
        assert _checks.dtype_name(mask.dtype) == "bool", kwargs
        np.testing.assert_array_equal(d2l.to_numpy(mask), reference.causal_mask(q, k, **kwargs), err_msg=str(kwargs))
    np.testing.assert_array_equal(d2l.to_numpy(d2l.causal_mask(4, offset=1)), reference.causal_mask(4, offset=1))


# --- masked_softmax ---------------------------------------------------------------------------


@pytest.mark.against_reference
@PROFILE
@given(data=st.data())
def test_agrees_with_reference(d2l, data):
    """Random shapes, lengths (0 and beyond the key count included), masks and scales."""
    agree(d2l, "masked_softmax", data.draw(calls("masked_softmax"), label="call"))


def test_lengths_beyond_the_keys_mean_all_keys(d2l):
    X = t(d2l, 2, 3, 5)
    np.testing.assert_allclose(d2l.to_numpy(d2l.masked_softmax(X, ints(d2l, 5, 99))),
                               d2l.to_numpy(d2l.masked_softmax(X)), atol=1e-6)


# --- lengths, written the framework's own way -------------------------------------------------
# d2l's MXNet code writes lengths as `np.array([2, 3])`, which MXNet's NumPy interface makes
# float32; PyTorch's `torch.tensor([2, 3])` is int64, JAX's `jnp.array` int32 and TensorFlow's
# `tf.constant` int32 (adapter.array). Each means what the int32 lengths mean.


def scores(d2l):
    return d2l.tensor(np.random.default_rng(0).normal(size=(2, 3, 5)))


def integer_lens(d2l, values):
    return d2l.tensor(np.array(values, dtype=np.int32))


@pytest.mark.parametrize("values", [[2, 3], [[1, 0, 9], [5, 2, 4]]], ids=["per-sequence", "per-query"])
def test_idiomatic_lengths(d2l, adapter, values):
    """The framework's own `array([2, 3])` works, whatever dtype the framework gives it."""
    want = d2l.to_numpy(d2l.masked_softmax(scores(d2l), integer_lens(d2l, values)))
    got = d2l.to_numpy(d2l.masked_softmax(scores(d2l), adapter.array(values)))
    np.testing.assert_array_equal(got, want)
    assert (want[0, :, 2:] == 0).all() if values == [2, 3] else (want[0, 1] == 0).all()  # the lengths did mask


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_whole_valued_float_lengths(d2l, dtype):
    """Whole-valued float lengths mean exactly what the integers mean, in attention calls too."""
    lens = [[1, 0, 9], [5, 2, 4]]
    X = scores(d2l)
    np.testing.assert_array_equal(d2l.to_numpy(d2l.masked_softmax(X, d2l.tensor(np.array(lens, dtype)))),
                                  d2l.to_numpy(d2l.masked_softmax(X, integer_lens(d2l, lens))))
    rng = np.random.default_rng(1)
    q, k, v = (d2l.tensor(rng.normal(size=s)) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 6)))
    attention = d2l.DotProductAttention()
    out_float = d2l.to_numpy(attention(q, k, v, d2l.tensor(np.array([2.0, 4.0], dtype)), training=False))
    out_int = d2l.to_numpy(attention(q, k, v, integer_lens(d2l, [2, 4]), training=False))
    np.testing.assert_array_equal(out_float, out_int)


# --- numbers at the edges ---------------------------------------------------------------------


def scores_and_lens(scale=1.0):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 4, 6)) * scale
    lens = np.array([[6, 2, 0, 9], [1, 3, 5, 6], [0, 0, 4, 2]], dtype=np.int32)
    return X, lens


def test_large_logits_are_stable(d2l):
    X, lens = scores_and_lens(scale=1e4)
    mask = np.random.default_rng(1).random((3, 4, 6)) < 0.8
    got = d2l.to_numpy(d2l.masked_softmax(d2l.tensor(X), d2l.tensor(lens), mask=d2l.tensor(mask)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, reference.masked_softmax(X, lens, mask=mask), atol=1e-5)


LOW_PRECISION_ATOL = {"float16": 2e-3, "bfloat16": 8e-3}  # 4 units of 2**-11, 2 units of 2**-8


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=pytest.mark.needs("bfloat16"))])
def test_low_precision_keeps_dtype_and_accuracy(d2l, dtype):
    X, lens = scores_and_lens(scale=3.0)
    X_low = d2l.tensor(X, dtype)
    weights = d2l.masked_softmax(X_low, d2l.tensor(lens))
    assert _checks.dtype_name(weights.dtype) == dtype
    got = d2l.to_numpy(weights).astype(np.float64)
    assert np.all(np.isfinite(got))
    # against the reference on the same rounded inputs: only the computation's error counts, a couple of
    # units in the last place of weights near 1 (bfloat16 keeps 8 significant bits: its unit there is 2**-8,
    # and a softmax computed in bfloat16 throughout, as TensorFlow's one-thread kernel does, is 1.2 units off)
    want = reference.masked_softmax(d2l.to_numpy(X_low).astype(np.float64), lens)
    np.testing.assert_allclose(got, want, atol=LOW_PRECISION_ATOL[dtype])


def test_empty_rows_have_zero_weights_and_zero_gradients(d2l):
    X, lens = scores_and_lens()
    projection = np.random.default_rng(2).normal(size=X.shape)
    out, (grad,), _ = d2l.value_and_grads(d2l.masked_softmax, [X], projection, valid_lens=lens)
    empty = lens == 0                                              # (b, q) rows with nothing to attend to
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
    assert np.all(out[empty] == 0) and np.all(grad[empty] == 0)


# --- bad input --------------------------------------------------------------------------------

BAD_INPUT = {
    # valid_lens
    "lens per-query count": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), ints(d2l, [1, 2], [3, 4])), ValueError,
                             r"valid_lens must have shape .* got \(2, 2\)"),
    "lens rank": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), d2l.tensor(np.ones((2, 3, 1), np.int32))),
                  ValueError, r"valid_lens must have shape"),
    "lens negative": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), ints(d2l, 2, -1)), ValueError,
                      r"valid_lens must be >= 0, got a length of -1"),
    "lens fractional": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), d2l.tensor([2.0, 1.5])), ValueError,
                        r"valid_lens must hold whole numbers of keys, got a fractional length 1.5"),
    "lens boolean": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), d2l.tensor(np.array([True, False]))), TypeError,
                     r"valid_lens must be integers \(or floats holding whole numbers\), got dtype bool"),
    # mask
    "mask shape": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), mask=d2l.causal_mask(3, 4)), ValueError,
                   r"mask of shape \(3, 4\) does not broadcast to the scores' shape \(2, 3, 5\)"),
    "mask not boolean": (lambda d2l: d2l.masked_softmax(t(d2l, 2, 3, 5), mask=ints(d2l, 1, 0, 1, 1, 0)), TypeError,
                         r"mask must be boolean \(True = may attend\), got dtype int32"),
    "mask window zero": (lambda d2l: d2l.causal_mask(3, window=0), ValueError,
                         r"window must be None or an integer >= 1 \(positions each query sees\), got 0"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)
