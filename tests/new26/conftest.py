"""A stand-in for the capability declarations of d2lattn/_backend.py while they are being written:
`pytest.mark.needs("training")` skips a test, with the declared reason, on a backend that lacks
that capability. Where _backend declares LACKS, that declaration is used."""

import pytest

from d2lattn import _backend

FORWARD_ONLY = "the NumPy reference is forward-only: no autodiff, so no training and no dropout"
LACKS = getattr(_backend, "LACKS", {"numpy": {"training": FORWARD_ONLY, "dropout": FORWARD_ONLY}})


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(capability): skip where the backend lacks it (_backend.LACKS)")


def pytest_collection_modifyitems(config, items):
    lacks = LACKS.get(config.backend_name, {})
    for item in items:
        for marker in item.iter_markers("needs"):
            for capability in marker.args:
                if capability in lacks:
                    item.add_marker(pytest.mark.skip(reason=f"needs {capability}: {lacks[capability]}"))
