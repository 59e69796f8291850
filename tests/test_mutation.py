"""The harness can fail: deliberately wrong implementations are caught.

Each mutant wraps the backend under test with one classic bug, and the same
comparison that passes the real backend must reject it.
"""

import math
import types

import pytest

from tests import harness
from tests.cases import CASES


def unscaled(d2l):
    """Dot-product attention that forgets to divide the scores by sqrt(d).

    A subclass of the backend's own class, so it stays the framework's kind of
    module (JAX transforms reach an nnx module's state only through its arguments).
    """

    class Unscaled(d2l.DotProductAttention):
        def __call__(self, queries, keys, values, *args, **kwargs):
            return super().__call__(queries * math.sqrt(queries.shape[-1]), keys, values, *args, **kwargs)

    return Unscaled


def mutant(d2l, **overrides):
    api = types.SimpleNamespace(**{name: getattr(d2l, name) for name in d2l.__all__})
    vars(api).update(overrides)
    return api


def lengths_ignored(d2l):
    """masked_softmax that forgets valid_lens."""
    return mutant(d2l, masked_softmax=lambda X, valid_lens=None, *, mask=None: d2l.masked_softmax(X, mask=mask))


MUTANTS = {  # name: (make the mutant, the cases it must fail)
    "unscaled scores": (lambda d2l: mutant(d2l, DotProductAttention=unscaled(d2l)), "dot-"),
    "valid_lens ignored": (lengths_ignored, "softmax-lens"),
}


@pytest.mark.parametrize("name", MUTANTS)
def test_harness_rejects_mutant(d2l, name):
    make, prefix = MUTANTS[name]
    api = make(d2l)
    for case in [c for c in CASES if c.name.startswith(prefix)]:
        diffs = harness.differences(harness.run_case(api, case), harness.expected(case.name))
        assert harness.failures(diffs), f"the harness passed the '{name}' mutant on case {case.name}"
