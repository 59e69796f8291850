"""Numbers stay right at the edges: huge logits, half precision, empty rows, saturated tanh."""

import numpy as np
import pytest

from d2lattn import _checks
from d2lattn import numpy as reference

# Low-precision dtypes a backend cannot represent, with the reason.
UNSUPPORTED = {
    ("numpy", "bfloat16"): "NumPy has no bfloat16 dtype (the reference computes in float64)",
    ("mxnet", "bfloat16"): "MXNet 1.9's NumPy interface has no bfloat16 arrays (only AMP's legacy graphs cast to it)",
}


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


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_keeps_dtype_and_accuracy(d2l, backend_name, dtype):
    if (backend_name, dtype) in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[backend_name, dtype])
    X, lens = scores_and_lens(scale=3.0)
    X_low = d2l.tensor(X, dtype)
    weights = d2l.masked_softmax(X_low, d2l.tensor(lens))
    assert _checks.dtype_name(weights.dtype) == dtype
    got = d2l.to_numpy(weights).astype(np.float64)
    assert np.all(np.isfinite(got))
    # against the reference on the same rounded inputs: only the computation's error counts
    want = reference.masked_softmax(d2l.to_numpy(X_low).astype(np.float64), lens)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_empty_rows_have_zero_weights_and_zero_gradients(d2l):
    X, lens = scores_and_lens()
    projection = np.random.default_rng(2).normal(size=X.shape)
    out, (grad,), _ = d2l.value_and_grads(d2l.masked_softmax, [X], projection, valid_lens=lens)
    empty = lens == 0                                              # (b, q) rows with nothing to attend to
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
    assert np.all(out[empty] == 0) and np.all(grad[empty] == 0)


def test_empty_rows_through_attention(d2l):
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 6))
    attention = d2l.DotProductAttention()
    out, grads, _ = d2l.value_and_grads(attention, [q, k, v], rng.normal(size=(2, 3, 6)),
                                        valid_lens=np.array([0, 5], np.int32), training=False)
    assert all(np.all(np.isfinite(g)) for g in [out, *grads])
    assert np.all(out[0] == 0) and np.all(grads[0][0] == 0)        # the empty sequence: zeros, no gradient


def test_saturated_additive_attention_has_finite_gradients(d2l):
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(2, 3, 4)) * 1e3, rng.normal(size=(2, 5, 4)) * 1e3, rng.normal(size=(2, 5, 6))
    attention = d2l.AdditiveAttention(4, 4, 8)
    out, grads, param_grads = d2l.value_and_grads(attention, [q, k, v], rng.normal(size=(2, 3, 6)),
                                                  valid_lens=np.array([2, 5], np.int32), training=False)
    assert all(np.all(np.isfinite(g)) for g in [out, *grads, *param_grads.values()])
