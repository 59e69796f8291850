"""The backend under test exports the whole contract of d2lattn/api.py, with the same signatures."""

import inspect

import pytest

from d2lattn import api

FUNCTIONS = [n for n in api.__all__ if inspect.isfunction(getattr(api, n))]
CLASSES = [n for n in api.__all__ if inspect.isclass(getattr(api, n))]


def _parameters(fn, drop_self=False):
    params = list(inspect.signature(fn).parameters.values())
    return params[1:] if drop_self else params


def assert_compatible(ours, contract, where):
    """Same names, kinds and defaults in the same order; a backend may add keyword-only
    parameters with defaults (e.g. Flax's `rngs`)."""
    extra = [p for p in ours if p.name not in {c.name for c in contract}]
    for p in extra:
        assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (
            f"{where}: extra parameter {p.name!r} must be keyword-only with a default")
    shared = [(p.name, p.kind, p.default) for p in ours if p not in extra]
    assert shared == [(p.name, p.kind, p.default) for p in contract], (
        f"{where}: signature {[p.name for p in ours]} does not match the contract {[p.name for p in contract]}")


def _call_method(cls):
    """The method a framework calls on `module(...)`: forward (PyTorch), call (Keras), __call__ (NNX, and
    Gluon 1.x, whose Block.__call__ takes positional arrays only; hybrid_forward(F, ...) is the graph)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("d2lattn."):
            for name in ("forward", "call", "__call__"):
                if name in vars(klass):
                    return getattr(cls, name)
    raise AssertionError(f"{cls.__name__} defines no call method")


def test_exports_everything(d2l, backend_name):
    missing = [n for n in api.__all__ if not hasattr(d2l, n)]
    assert not missing, f"backend {backend_name} lacks {missing}"
    assert d2l.BACKEND == backend_name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_signature(d2l, name):
    assert_compatible(_parameters(getattr(d2l, name)), _parameters(getattr(api, name)), name)


@pytest.mark.parametrize("name", CLASSES)
def test_class_signatures(d2l, name):
    cls, contract = getattr(d2l, name), getattr(api, name)
    assert_compatible(_parameters(cls.__init__, True), _parameters(contract.__init__, True), f"{name}()")
    assert_compatible(_parameters(_call_method(cls), True), _parameters(contract.__call__, True), f"{name}.__call__")


@pytest.mark.parametrize("name", CLASSES)
def test_every_module_call_takes_training(d2l, name):
    """`training=None` on every module's call, in the contract and in the backend, so one line
    of chapter code runs on every backend (ignored where a module has no dropout)."""
    for where, call in (("contract", getattr(api, name).__call__), (d2l.BACKEND, _call_method(getattr(d2l, name)))):
        training = inspect.signature(call).parameters.get("training")
        assert training is not None and training.default is None and training.kind is training.KEYWORD_ONLY, (
            f"{name}.__call__ ({where}) must take a keyword-only training=None")


def test_backend_folder_mirrors_the_others(backend_name):
    """Every backend folder holds the same modules (d2lattn/_backend.py MODULES), so a reader
    who knows d2lattn/torch/attention.py finds its JAX twin at d2lattn/jax/attention.py."""
    import pathlib

    from d2lattn import _backend

    folder = pathlib.Path(__file__).resolve().parents[1] / "d2lattn" / backend_name
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(("__init__", *_backend.MODULES))
