"""Dropout and the training mode, on every module that has dropout.

With dropout=0.5: evaluation (training=False, and training=None in the framework's evaluation
state) equals the float64 reference; training=True differs; training=None follows the
framework's own mode (module.train()/eval(), nnx's train/eval, Keras' call context, MXNet's
autograd.record()). Where dropout's effect can be read off directly (the weights of a
dot-product attention over identity values, a positional encoding of zeros), it zeroes a
plausible fraction and scales the rest by 1 / (1 - p): inverted dropout keeps the mean.
"""

import dataclasses
import inspect

import numpy as np
import pytest

from d2lattn import api
from d2lattn import numpy as reference
from tests import harness
from tests.cases import CASES

RATE = 0.5


def _dropout_modules():
    """The first plain harness case of every component whose constructor takes `dropout`, with
    dropout=0.5 and, where it has layers, two of them (a GRU's dropout acts between layers)."""
    cases = {}
    for case in CASES:
        init = inspect.signature(getattr(api, case.component).__init__).parameters
        if "dropout" in init and case.component not in cases and not (case.keywords or case.call or case.pieces):
            layers = {"num_layers": 2} if "num_layers" in init else {}
            cases[case.component] = dataclasses.replace(case, args={**case.args, **layers, "dropout": RATE})
    return list(cases.values())


DROPOUT_CASES = _dropout_modules()


def in_mode(backend_name, module, train, *inputs, **kwargs):
    """Call `module` with training=None after putting the framework in its training (True) or
    evaluation (False) state, the way a user of that framework does."""
    if backend_name == "torch":
        module.train(train)
    elif backend_name == "jax":
        module.train() if train else module.eval()
    elif backend_name == "mxnet":
        from mxnet import autograd
        with autograd.record(train_mode=train):
            return module(*inputs, **kwargs)
    elif backend_name == "tensorflow":
        return _Enclosing(module)(*inputs, training=train, **kwargs)
    return module(*inputs, **kwargs)  # numpy: always evaluation


def _Enclosing(module):
    """A Keras layer that calls `module` without `training`: Keras passes the enclosing call's on."""
    import keras

    class Enclosing(keras.layers.Layer):
        def call(self, *inputs, training=None, **kwargs):
            return module(*inputs, **kwargs)

    return Enclosing()


def first(out):
    return first(out[0]) if isinstance(out, (tuple, list)) else out


def build(d2l, case):
    """The module with the case's random weights, its inputs and keyword arguments (native)."""
    inputs, kwargs, params = harness.make_call(case)
    module = getattr(d2l, case.component)(**case.args)
    d2l.set_params(module, params)
    kwargs.pop("training", None)
    kwargs = {k: d2l.tensor(v) for k, v in kwargs.items()}
    return module, [d2l.tensor(x) for x in inputs], kwargs


def reference_output(case):
    """The float64 reference's output for the case, in evaluation mode."""
    return output(reference, *build(reference, case), training=False)


def output(d2l, module, inputs, kwargs, **mode):
    return d2l.to_numpy(first(module(*inputs, **kwargs, **mode)))


def output_in_mode(d2l, backend_name, module, train, inputs, kwargs):
    return d2l.to_numpy(first(in_mode(backend_name, module, train, *inputs, **kwargs)))


@pytest.mark.parametrize("case", DROPOUT_CASES, ids=[c.component for c in DROPOUT_CASES])
def test_evaluation_ignores_dropout(d2l, backend_name, case):
    """training=False, and None in the framework's evaluation state, give the reference's output."""
    module, inputs, kwargs = build(d2l, case)
    want = reference_output(case)
    np.testing.assert_allclose(output(d2l, module, inputs, kwargs, training=False), want, atol=1e-5)
    np.testing.assert_allclose(output_in_mode(d2l, backend_name, module, False, inputs, kwargs), want, atol=1e-5)


@pytest.mark.parametrize("case", DROPOUT_CASES, ids=[c.component for c in DROPOUT_CASES])
def test_training_applies_dropout(d2l, backend_name, case):
    """training=True, and None in the framework's training state, drop something."""
    if backend_name == "numpy":
        module, inputs, kwargs = build(d2l, case)
        with pytest.raises(ValueError, match="training: the NumPy reference is forward-only"):
            module(*inputs, **kwargs, training=True)
        return
    module, inputs, kwargs = build(d2l, case)
    evaluation = output(d2l, module, inputs, kwargs, training=False)
    assert np.abs(output(d2l, module, inputs, kwargs, training=True) - evaluation).max() > 1e-3
    followed = output_in_mode(d2l, backend_name, module, True, inputs, kwargs)
    assert np.abs(followed - evaluation).max() > 1e-3, "training=None did not follow the framework's training mode"
    back = output_in_mode(d2l, backend_name, module, False, inputs, kwargs)  # and back
    np.testing.assert_allclose(back, evaluation, atol=1e-6)


def _inverted(kept, full):
    """Entries are either 0 or full / (1 - RATE); a plausible fraction of the nonzero ones is zeroed."""
    live = np.abs(full) > 1e-6
    zeroed = kept[live] == 0
    np.testing.assert_allclose(kept[live][~zeroed], full[live][~zeroed] / (1 - RATE), rtol=1e-5)
    assert 0.35 < zeroed.mean() < 0.65, f"dropout={RATE} zeroed {zeroed.mean():.2f} of the weights"


def test_attention_dropout_is_inverted(d2l, backend_name):
    """Over identity values, a dot-product attention's output is its (dropped) weights."""
    if backend_name == "numpy":
        return  # forward-only: the reference refuses training=True (test_training_applies_dropout)
    k = 64
    rng = np.random.default_rng(0)
    q, keys = d2l.tensor(rng.normal(size=(4, 16, 8))), d2l.tensor(rng.normal(size=(4, k, 8)))
    values = d2l.tensor(np.broadcast_to(np.eye(k), (4, k, k)).copy())
    attention = d2l.DotProductAttention(dropout=RATE)
    full = d2l.to_numpy(attention(q, keys, values, training=False))
    _inverted(d2l.to_numpy(attention(q, keys, values, training=True)), full)


def test_positional_encoding_dropout_is_inverted(d2l, backend_name):
    if backend_name == "numpy":
        return  # forward-only: the reference refuses training=True (test_training_applies_dropout)
    encoding = d2l.PositionalEncoding(32, dropout=RATE, max_len=64)
    X = d2l.zeros((4, 64, 32))
    full = d2l.to_numpy(encoding(X, training=False))
    _inverted(d2l.to_numpy(encoding(X, training=True)), full)


def test_gru_dropout_only_between_layers(d2l, backend_name):
    """A one-layer GRU has no layer boundary, so its dropout changes nothing, even in training."""
    if backend_name == "numpy":
        return  # forward-only: the reference refuses training=True (test_training_applies_dropout)
    gru = d2l.GRU(3, 4, num_layers=1, dropout=RATE)
    X = d2l.tensor(np.random.default_rng(0).normal(size=(2, 5, 3)))
    np.testing.assert_allclose(d2l.to_numpy(gru(X, training=True)[0]), d2l.to_numpy(gru(X, training=False)[0]),
                               atol=1e-6)
