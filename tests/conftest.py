"""The backend under test: `--backend NAME` or $D2LATTN_BACKEND (default torch).

The suite is the same for every backend. A requested backend that cannot be
imported is an error, never a skip: a green run always means it ran.
"""

import os

import pytest

from d2lattn import _backend


def pytest_addoption(parser):
    parser.addoption("--backend", default=None, help="backend to test (default: $D2LATTN_BACKEND or torch)")


def pytest_configure(config):
    name = config.getoption("--backend") or os.environ.get(_backend.ENV_VAR) or _backend.DEFAULT
    config.backend_name = _backend.canonical(name)


def pytest_report_header(config):
    return f"d2lattn backend: {config.backend_name}"


@pytest.fixture(scope="session")
def backend_name(request):
    return request.config.backend_name


@pytest.fixture(scope="session")
def d2l(backend_name):
    return _backend.load(backend_name)


def pytest_ignore_collect(collection_path, config):
    """tests/native/test_<backend>.py compares one framework with its own attention, and
    tests/distributed/test_<backend>.py runs ring attention on its distributed engine: the
    other backends' environments do not have that framework, so only this backend's is collected."""
    if collection_path.parent.name in ("native", "distributed") and collection_path.name.startswith("test_"):
        return collection_path.stem != f"test_{config.backend_name}"
    return None
