"""The backend under test exports the whole contract of d2lattn/api.py, with the same signatures;
every backend folder mirrors the others, module by module and name by name (read from source)."""

import ast
import inspect
import pathlib

import pytest

from d2lattn import _backend, api

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "d2lattn"
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
    folder = PACKAGE / backend_name
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(("__init__", *_backend.MODULES))


# --- the mirror one level deeper: each backend module's top-level names ------------------------
# Public (non-underscore) top-level functions and classes of d2lattn/<backend>/<module>.py must be
# the same names in the same order in every backend; private helpers (_x) are not compared. A
# name only some backends define is declared here, ONCE, with the reason: {(backend, module): {name: why}}.
MIRROR_EXCEPTIONS = {
    ("numpy", "ops"): {"lengths": "the reference's valid_lens reshaper; the frameworks keep theirs private "
                                  "(_lengths in blockwise.py)"},
    ("mxnet", "ops"): {"train_mode": "Gluon reads training from autograd's mode, so a call's training=True/False "
                                     "switches that mode (the other frameworks pass a flag on)",
                       "lower_masked": "np.where is slow in MXNet 1.9 and its gradient wrong with a scalar, so "
                                       "masked scores are lowered with one minimum, shared by attention.py"},
    ("tensorflow", "attention"): {"dense": "a Keras Dense layer is built lazily; this one builds it at once so "
                                           "its weights exist for set_params",
                                  "AttentionLayer": "Keras treats a `mask=` argument as a padding mask to "
                                                    "propagate; this base layer takes it as the attention mask"},
    ("numpy", "seq2seq"): {"GRULayer": "the reference writes one GRU layer out (no framework cell to wrap)"},
    ("jax", "seq2seq"): {"GRULayer": "nnx.GRUCell holds one bias per map; this layer holds the canonical "
                                     "W_xr ... b_hh"},
    ("tensorflow", "seq2seq"): {"embedding": "a Keras Embedding built at once, so its table exists for "
                                             "set_params (as attention.dense)"},
    ("numpy", "params"): {"Module": "the reference's own module base (parameters as a dict): it has no framework"},
    ("torch", "params"): {"Layout": "where a canonical parameter sits in a stored tensor (rows of it, transposed "
                                    "for (out, in) weights); JAX's nnx parameters are the canonical arrays"},
    ("tensorflow", "params"): {"Layout": "as torch's, for a Keras variable"},
    ("mxnet", "params"): {"Layout": "as torch's, for a Gluon parameter (and the GRU's split r, z biases)"},
}


def top_level_names(path, public=True):
    """The function and class names defined at the top level of `path`, in order, read with ast."""
    tree = ast.parse(path.read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return [n for n in names if not n.startswith("_")] if public else names


@pytest.mark.parametrize("module", _backend.MODULES)
def test_backend_modules_mirror_each_other(module):
    """d2lattn/<backend>/<module>.py defines the same public names in the same order in every backend,
    but for MIRROR_EXCEPTIONS; each exception is still there (the list does not go stale)."""
    mirrored = {}
    for backend in _backend.BACKENDS:
        names = top_level_names(PACKAGE / backend / f"{module}.py")
        declared = MIRROR_EXCEPTIONS.get((backend, module), {})
        stale = sorted(set(declared) - set(names))
        assert not stale, f"MIRROR_EXCEPTIONS declares {stale} for {backend}/{module}.py, which does not define them"
        mirrored[backend] = [n for n in names if n not in declared]
    first, *others = _backend.BACKENDS
    for backend in others:
        assert mirrored[backend] == mirrored[first], (
            f"{backend}/{module}.py defines {mirrored[backend]}, {first}/{module}.py {mirrored[first]}: "
            "the same names in the same order, or an entry in MIRROR_EXCEPTIONS with its reason")


def test_adapters_mirror_each_other():
    """tests/adapters/<backend>.py: one per backend, the same function names in the same order."""
    folder = pathlib.Path(__file__).resolve().parent / "adapters"
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted(("__init__", *_backend.BACKENDS))
    names = {b: top_level_names(folder / f"{b}.py", public=False) for b in _backend.BACKENDS}
    first = _backend.BACKENDS[0]
    for backend, defined in names.items():
        assert defined == names[first], f"adapters/{backend}.py defines {defined}, adapters/{first}.py {names[first]}"
