"""Dropout and the training mode, the same three tests for every component that has dropout.

With dropout=0.5: evaluation (training=False, and training=None in the framework's evaluation
state) equals the float64 reference; training=True differs; training=None follows the
framework's own mode (module.train()/eval(), nnx's train/eval, Keras' call context, MXNet's
autograd.record(): tests/adapters/); a backend without training refuses training=True.
A component file takes them with `dropout_tests("<its module>")`.
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


def dropout_cases(module):
    """The first plain harness case of every component of the backend module `module` (one of
    _backend.MODULES) whose constructor takes `dropout`, with dropout=0.5 and, where it has layers,
    two of them (a GRU's dropout acts between layers)."""
    cases = {}
    for case in CASES:
        init = inspect.signature(getattr(api, case.component).__init__).parameters
        home = getattr(reference, case.component).__module__.rsplit(".", 1)[-1]
        if home == module and "dropout" in init and case.component not in cases and not (
                case.keywords or case.call or case.pieces):
            layers = {"num_layers": 2} if "num_layers" in init else {}
            cases[case.component] = dataclasses.replace(case, args={**case.args, **layers, "dropout": RATE})
    return list(cases.values())


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


def output(d2l, module, inputs, kwargs, **mode):
    return d2l.to_numpy(first(module(*inputs, **kwargs, **mode)))


def output_in_mode(d2l, adapter, module, train, inputs, kwargs):
    return d2l.to_numpy(first(adapter.call_in_mode(module, train, *inputs, **kwargs)))


def reference_output(case):
    """The float64 reference's output for the case, in evaluation mode."""
    return output(reference, *build(reference, case), training=False)


def dropout_tests(module):
    """The three dropout tests over `module`'s components, for a test file to bind to its names."""
    cases = dropout_cases(module)
    assert cases, f"no component of {module} takes dropout: the tests would pass vacuously"
    over_cases = pytest.mark.parametrize("case", cases, ids=[c.component for c in cases])

    @over_cases
    def test_evaluation_ignores_dropout(d2l, adapter, case):
        """training=False, and None in the framework's evaluation state, give the reference's output."""
        module, inputs, kwargs = build(d2l, case)
        want = reference_output(case)
        np.testing.assert_allclose(output(d2l, module, inputs, kwargs, training=False), want, atol=1e-5)
        np.testing.assert_allclose(output_in_mode(d2l, adapter, module, False, inputs, kwargs), want, atol=1e-5)

    @over_cases
    @pytest.mark.needs("dropout")
    def test_training_applies_dropout(d2l, adapter, case):
        """training=True, and None in the framework's training state, drop something; and back."""
        module, inputs, kwargs = build(d2l, case)
        evaluation = output(d2l, module, inputs, kwargs, training=False)
        assert np.abs(output(d2l, module, inputs, kwargs, training=True) - evaluation).max() > 1e-3
        followed = output_in_mode(d2l, adapter, module, True, inputs, kwargs)
        assert np.abs(followed - evaluation).max() > 1e-3, "training=None did not follow the framework's training mode"
        back = output_in_mode(d2l, adapter, module, False, inputs, kwargs)
        np.testing.assert_allclose(back, evaluation, atol=1e-6)

    @over_cases
    @pytest.mark.without("training")
    def test_training_is_refused(d2l, case):
        """A backend that cannot train says so when asked to, rather than evaluate silently."""
        module, inputs, kwargs = build(d2l, case)
        refusal = "training: the NumPy reference is forward-only and deterministic, so it cannot apply dropout"
        with pytest.raises(ValueError, match=refusal):
            module(*inputs, **kwargs, training=True)

    return test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused


def assert_inverted(kept, full):
    """Entries are either 0 or full / (1 - RATE); a plausible fraction of the nonzero ones is zeroed."""
    live = np.abs(full) > 1e-6
    zeroed = kept[live] == 0
    np.testing.assert_allclose(kept[live][~zeroed], full[live][~zeroed] / (1 - RATE), rtol=1e-5)
    assert 0.35 < zeroed.mean() < 0.65, f"dropout={RATE} zeroed {zeroed.mean():.2f} of the weights"
