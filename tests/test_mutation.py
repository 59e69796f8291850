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
    """The backend's API with some names replaced (a module object, so the harness can cache by it)."""
    api = types.ModuleType(f"{d2l.__name__}_mutant")
    vars(api).update({name: getattr(d2l, name) for name in d2l.__all__}, **overrides)
    return api


def lengths_ignored(d2l, adapter):
    """masked_softmax that forgets valid_lens."""
    return mutant(d2l, masked_softmax=lambda X, valid_lens=None, *, mask=None: d2l.masked_softmax(X, mask=mask))


def gradient_halved(d2l, adapter):
    """LayerNorm whose forward pass is exact but whose gradient is half the true one:
    stop(y) + (y - stop(y)) / 2 is y, and its derivative is dy / 2. Only the backward can see it."""
    stop = adapter.stop_gradient  # the framework's own

    class Halved(d2l.LayerNorm):
        def __call__(self, X, *args, **kwargs):
            Y = super().__call__(X, *args, **kwargs)
            return stop(Y) + (Y - stop(Y)) * 0.5

    return mutant(d2l, LayerNorm=Halved)


MUTANTS = {  # name: (make the mutant, the cases it must fail, the kinds of result that must show it)
    "unscaled scores": (lambda d2l, _: mutant(d2l, DotProductAttention=unscaled(d2l)), "dot-", ("output", "grad")),
    "valid_lens ignored": (lengths_ignored, "softmax-lens", ("output", "grad")),
    "LayerNorm gradient halved": (gradient_halved, "layernorm", ("grad",)),
}


@pytest.mark.against_reference
@pytest.mark.parametrize("name", MUTANTS)
def test_harness_rejects_mutant(d2l, adapter, name):
    make, prefix, kinds = MUTANTS[name]
    api = make(d2l, adapter)
    cases = [c for c in CASES if c.name.startswith(prefix)]
    assert cases, f"the '{name}' mutant meets no harness case (prefix {prefix!r}): it would pass vacuously"
    for case in cases:
        bad = harness.failures(harness.differences(harness.run_case(api, case), harness.expected(case.name)))
        assert bad, f"the harness passed the '{name}' mutant on case {case.name}"
        assert {harness.kind(f) for f in bad} <= set(kinds) | {"weights"}, (
            f"the '{name}' mutant should show only in {kinds}, but {sorted(bad)} differ")
        assert {harness.kind(f) for f in bad} & set(kinds), f"'{name}': {sorted(bad)}"
