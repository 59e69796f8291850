"""Lengths made the framework's own way mean what integer lengths mean, on every backend.

d2l's MXNet code writes lengths as `np.array([2, 3])`, which MXNet's NumPy interface makes
float32; PyTorch's `torch.tensor([2, 3])` is int64, JAX's `jnp.array` int32 and TensorFlow's
`tf.constant` int32. Each is built here with the framework's own constructor (the one place a
test names the framework), then compared with int32 lengths through the shared API.
"""

import importlib

import numpy as np
import pytest

# The framework's own array constructor, given a Python list: what a learner writes.
IDIOMATIC = {
    "numpy": ("numpy", "array"),
    "torch": ("torch", "tensor"),
    "jax": ("jax.numpy", "array"),
    "tensorflow": ("tensorflow", "constant"),
    "mxnet": ("mxnet.numpy", "array"),  # mxnet.np
}


def native(backend_name, values):
    module, name = IDIOMATIC[backend_name]
    return getattr(importlib.import_module(module), name)(values)


def scores(d2l):
    return d2l.tensor(np.random.default_rng(0).normal(size=(2, 3, 5)))


def integer_lens(d2l, values):
    return d2l.tensor(np.array(values, dtype=np.int32))


@pytest.mark.parametrize("values", [[2, 3], [[1, 0, 9], [5, 2, 4]]], ids=["per-sequence", "per-query"])
def test_idiomatic_lengths(d2l, backend_name, values):
    """The framework's own `array([2, 3])` works, whatever dtype the framework gives it."""
    want = d2l.to_numpy(d2l.masked_softmax(scores(d2l), integer_lens(d2l, values)))
    got = d2l.to_numpy(d2l.masked_softmax(scores(d2l), native(backend_name, values)))
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
