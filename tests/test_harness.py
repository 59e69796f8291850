"""Every harness case on the backend under test, against the float64 reference.

Forward outputs and attention weights within 1e-5, gradients within 1e-4 of
finite differences; eager and compiled (jit / tf.function / hybridized). Both
modes' results are written for `nox -s crosscheck`, which compares the frameworks
with each other.
"""

import pytest

from d2lattn import _backend
from tests import harness
from tests.cases import CASES

_collected, _skipped = {}, {}


@pytest.fixture(scope="module", autouse=True)
def write_results(backend_name):
    yield
    harness.write_part(backend_name, _collected, _skipped)  # merged by conftest.py when every process is done


@pytest.mark.against_reference
@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_reference(d2l, case, mode):
    lacking = _backend.lacks(d2l.BACKEND, f"{mode} {case.component}")  # e.g. MXNet's compiled blockwise_attention
    if lacking:
        _skipped[f"{case.name}@{mode}"] = lacking
        pytest.skip(lacking)
    result = harness.run_case(d2l, case, mode)
    want = harness.expected(case.name)
    bad = harness.failures(harness.differences(result, want))
    assert not bad, f"{case.name} ({mode}): max abs error above tolerance {harness.TOLERANCE}: {bad}"
    _collected[f"{case.name}@{mode}"] = result


def test_reference_gradients_are_finite_differences():
    """The oracle's gradients agree with the analytic gradient of a case simple enough to write down."""
    import numpy as np

    from d2lattn import numpy as ref

    X = np.random.default_rng(0).normal(size=(1, 1, 3))
    proj = np.array([[[1.0, -2.0, 0.5]]])
    _, (grad,), _ = ref.value_and_grads(ref.masked_softmax, [X], proj)
    s = np.exp(X) / np.exp(X).sum()
    analytic = s * (proj - (s * proj).sum())  # d/dX of sum(softmax(X) * proj)
    assert np.allclose(grad, analytic, atol=1e-8)
