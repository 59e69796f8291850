"""The backend under test: `--backend NAME` or $D2LATTN_BACKEND (default torch).

The suite is the same for every backend. A requested backend that cannot be
imported is an error, never a skip: a green run always means it ran.
"""

import os

import pytest

from d2lattn import _backend
from tests import harness  # NumPy and the reference only: no framework is imported before the flags below

# XLA (JAX's compiler, and TensorFlow's under jit_compile=True) compiles each operation of an
# eager call once per new shape, and at the suite's small shapes compiling is most of the time,
# LLVM's optimization passes most of that: the tests compile without them (13.2 -> 10.1 CPU s on
# 48 small eager compilations; the same IEEE arithmetic, unoptimized). A user's program keeps
# XLA's defaults; XLA_FLAGS set by the caller win. Set before any framework starts. XLA's older
# elemental emitters (use_fusion_emitters=false, a supported code path) compile a small operation in
# 22 ms instead of 35, which takes 15% off the suite's seven slowest JAX tests (188 -> 160 s, cold).
# The last two flags keep XLA's kernels on one thread, as the noxfile keeps the other frameworks'
# (one pytest-xdist worker per core).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                                   "--xla_cpu_use_fusion_emitters=false "
                                   "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
# Compiling is most of eager JAX's time (a harness case: 19.5 s the first time, 1.9 s the second), and
# pytest-xdist's workers each compile the same small operations again: a compilation cache on disk that
# they share, every entry kept, takes a quarter off the CPU time of the harness and composability
# tests (13.6 -> 10.0 CPU min), more on a second run. Compiled code for the same program and flags is
# the same code.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(harness.ROOT / "build" / "jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_addoption(parser):
    parser.addoption("--backend", default=None, help="backend to test (default: $D2LATTN_BACKEND or torch)")


def pytest_configure(config):
    name = config.getoption("--backend") or os.environ.get(_backend.ENV_VAR) or _backend.DEFAULT
    config.backend_name = _backend.canonical(name)
    if not hasattr(config, "workerinput"):  # the process that runs the tests or starts pytest-xdist's workers
        harness.clear_parts(config.backend_name)


def pytest_sessionfinish(session):
    """Merge the harness results that tests/test_harness.py's processes saved (tests/harness.py)."""
    if not hasattr(session.config, "workerinput"):
        harness.merge_parts(session.config.backend_name)


# A test that holds the backend under test to the NumPy reference (the harness, the property
# tests that compare with it, the mutants) proves nothing on numpy itself: it would compare the
# reference with itself. There it is skipped with this reason; the reference has checks of its own.
SELF_COMPARISON = ("compares the backend under test with the NumPy reference, so on numpy it would compare the "
                   "reference with itself; the reference is checked independently by tests/test_oracles.py "
                   "(closed forms, values and gradients worked out by hand)")


def pytest_collection_modifyitems(config, items):
    """Turn the capability markers into skips with their declared reasons (d2lattn/_backend.py)."""
    name = config.backend_name
    display = _backend.DISPLAY_NAMES[name]
    for item in items:
        if name == _backend.REFERENCE and item.get_closest_marker("against_reference"):
            item.add_marker(pytest.mark.skip(reason=SELF_COMPARISON))
        for marker in item.iter_markers("needs"):
            lacking = [c for c in marker.args if _backend.lacks(name, c)]
            if lacking:
                item.add_marker(pytest.mark.skip(reason=f"{display} lacks {lacking[0]}: "
                                                        f"{_backend.lacks(name, lacking[0])}"))
        for marker in item.iter_markers("without"):
            (capability,) = marker.args
            if not _backend.lacks(name, capability):
                item.add_marker(pytest.mark.skip(reason=f"checks how a backend without {capability} refuses it; "
                                                        f"{display} has {capability}"))


def pytest_report_header(config):
    return f"d2lattn backend: {config.backend_name}"


@pytest.fixture(scope="session")
def backend_name(request):
    return request.config.backend_name


@pytest.fixture(scope="session")
def d2l(backend_name):
    return _backend.load(backend_name)


@pytest.fixture(scope="session")
def adapter(backend_name):
    """The backend's framework-specific test code (tests/adapters/)."""
    from tests import adapters

    return adapters.load(backend_name)


def pytest_ignore_collect(collection_path, config):
    """tests/native/test_<backend>.py compares one framework with its own attention, and
    tests/distributed/test_<backend>.py runs ring attention on its distributed engine: the
    other backends' environments do not have that framework, so only this backend's is collected.
    tests/peer/ imports transformers and PyTorch: collected only where the backend has "peer"."""
    if collection_path.parent.name in ("native", "distributed") and collection_path.name.startswith("test_"):
        return collection_path.stem != f"test_{config.backend_name}"
    if collection_path.parent.name == "peer" and collection_path.name.startswith("test_"):
        return _backend.lacks(config.backend_name, "peer") is not None
    return None
