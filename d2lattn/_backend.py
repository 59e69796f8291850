"""The one place that knows the backends by name.

Everything that depends on *which* framework is selected goes through here:
the list of names, their aliases and display names, the book's tab order, how to
install each, what each cannot do (LACKS), and the import that turns a missing
framework into an ImportError a learner can act on. Adding or dropping a backend is
a change to this file and its folder d2lattn/<name>/. Importing this module imports
no framework (noxfile.py, book/ and benchmarks/ read it too).
"""

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os

ENV_VAR = "D2LATTN_BACKEND"
DEFAULT = "torch"
BACKENDS = ("torch", "jax", "tensorflow", "mxnet", "numpy")
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "flax": "jax", "np": "numpy"}
# The float64, forward-only backend every other one is held to; the rest are the frameworks.
REFERENCE = "numpy"
FRAMEWORK_BACKENDS = tuple(b for b in BACKENDS if b != REFERENCE)
DISPLAY_NAMES = {"torch": "PyTorch", "jax": "JAX", "tensorflow": "TensorFlow", "mxnet": "MXNet", "numpy": "NumPy"}
# The floating-point dtype each backend computes in (d2l.tensor's default).
FLOAT_DTYPE = {b: "float64" if b == REFERENCE else "float32" for b in BACKENDS}
# The book's framework tabs, in d2l.ai's order.
BOOK_TABS = ("torch", "mxnet", "jax", "tensorflow")

# The top-level modules each backend needs, and how to get them.
FRAMEWORKS = {
    "torch": ("torch",),
    "jax": ("jax", "flax"),
    "tensorflow": ("tensorflow",),
    "mxnet": ("mxnet",),
    "numpy": ("numpy",),
}
# The pip distributions that carry each framework, for version reports.
DISTRIBUTIONS = {
    "torch": ("torch",),
    "jax": ("jax",),
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "mxnet": ("mxnet",),
    "numpy": ("numpy",),
}
# Every backend folder holds these modules, the same names in the same order (the mirror a
# reader relies on); together with the backend-free figures and notebook helpers they
# define every name of the contract (d2lattn/api.py).
MODULES = ("ops", "attention", "encoding", "blocks", "seq2seq", "transformer", "decoder", "latent", "vision",
           "flex", "blockwise", "linear", "params", "grads", "train")
SHARED = ("d2lattn.plotting", "d2lattn.notebook", "d2lattn.rotary")
# What a backend cannot do, with the reason. A test that needs a capability says so with
# @pytest.mark.needs("capability") and is skipped with this reason where it is missing
# (tests/conftest.py); "compiled <name>" is one component's compiled mode (tests/harness.py).
PEER = ("Hugging Face transformers runs on PyTorch: tests/peer/ holds its modules to the NumPy reference and the "
        "PyTorch backend, and the harness carries that agreement to this backend")
TOKENIZERS = ("the `tokenizers` library (hub.load_tokenizer's) comes with transformers, in the PyTorch "
              "environment only; text in and out is tested there, the errors of load_tokenizer everywhere")
LACKS = {
    "numpy": {
        "training": ("the NumPy reference is forward-only: it refuses train_lm, train_seq2seq, train_classifier "
                     "and training=True"),
        "dropout": "the NumPy reference is deterministic: it evaluates, it never drops out",
        "autodiff": "the NumPy reference has no autodiff: its gradients are float64 central finite differences",
        "compiled": "the NumPy reference has no compiler: value_and_grads(compiled=True) runs it as it is",
        "vmap": "the NumPy reference has no function transformations: nothing maps a function over an axis",
        "bfloat16": "NumPy has no bfloat16 dtype (the reference computes in float64)",
        "container": "the NumPy reference is plain Python objects: no framework container saves, loads or traces them",
        "peer": PEER,
        "tokenizers": TOKENIZERS,
    },
    "torch": {
        "vmap GRU": "PyTorch has no vmap batching rule for aten::gru, the kernel of nn.GRU (which d2lattn's GRU is), "
                    "so torch.func.vmap cannot map any module built on it",
    },
    "mxnet": {
        "vmap": "MXNet 1.9 has no vectorizing map (neither mxnet.np nor Gluon maps a function over an axis)",
        "container cache": ("a block traced inside a user's hybridized graph knows positions, not shapes, so it "
                            "refuses a cache there (a TypeError); the model hybridized itself takes one"),
        "bfloat16": "MXNet 1.9's NumPy interface has no bfloat16 arrays (only AMP's legacy graphs cast to it)",
        "compiled blockwise_attention": (
            "blockwise_attention runs imperatively on MXNet: its custom backward is an mxnet.autograd.Function, "
            "which records on NDArrays and cannot enter a hybridized graph, and a graph symbol has no shape to "
            "count the key blocks by"),
        "compiled linear_attention": (
            "linear_attention runs imperatively on MXNet: its recurrent and chunked forms loop over positions and "
            "chunks, and a hybridized graph's symbols have no length to count them by"),
        "compiled gated_delta_rule": (
            "gated_delta_rule runs imperatively on MXNet: both forms loop over positions or chunks, and a "
            "hybridized graph's symbols have no length to count them by"),
        "compiled flex_attention": (
            "flex_attention runs imperatively on MXNet, for blockwise_attention's reasons: its custom backward "
            "is an mxnet.autograd.Function, and a graph symbol has no shape to plan the tiles by"),
        "peer": PEER,
        "tokenizers": TOKENIZERS,
    },
    "jax": {
        "peer": PEER,
        "tokenizers": TOKENIZERS,
    },
    "tensorflow": {"peer": PEER, "tokenizers": TOKENIZERS},
}
# Extras of pyproject.toml each backend's test session installs besides its own and "test": the
# peer suite's Hugging Face transformers in the PyTorch environment (see LACKS "peer"); its bench
# session too (benchmarks/checkpoints.py times from_pretrained and generate against transformers').
TEST_EXTRAS = {"torch": ("peer",)}
# Where each framework's Adam adds epsilon: to sqrt(v) after the bias correction (PyTorch, optax)
# or before it (Keras, Gluon); no framework lets us choose. tests/crosscheck.py holds frameworks
# that place it alike to a tighter bound.
EPSILON_AFTER_CORRECTION = {"torch": True, "jax": True, "tensorflow": False, "mxnet": False}
INSTALL = {
    name: f"pip install 'd2lattn[{name}]' -c constraints/{name}.txt"
    for name in BACKENDS
}


def canonical(name):
    """Return the canonical backend name for `name` (case-insensitive, aliases allowed)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in BACKENDS:
        valid = ", ".join(BACKENDS)
        aliases = ", ".join(f"{a}->{b}" for a, b in ALIASES.items())
        raise ValueError(
            f"unknown d2lattn backend {name!r}: expected one of {valid} "
            f"(aliases: {aliases}); set {ENV_VAR} to one of them"
        )
    return key


def lacks(name, capability):
    """Why backend `name` cannot do `capability` (a key of LACKS[name]), or None where it can."""
    return LACKS.get(canonical(name), {}).get(capability)


def selected():
    """The backend named by $D2LATTN_BACKEND (default: torch)."""
    return canonical(os.environ.get(ENV_VAR) or DEFAULT)


def load(name):
    """Import and return the module `d2lattn.<name>`."""
    return importlib.import_module(f"d2lattn.{canonical(name)}")


@contextlib.contextmanager
def requires(name):
    """Turn a missing framework into an ImportError that says how to install it.

    Each backend package wraps its imports in this, so both
    `import d2lattn` and `from d2lattn import jax` fail the same helpful way.
    """
    try:
        yield
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in FRAMEWORKS[name]:
            raise ImportError(
                f"the d2lattn backend {name!r} needs {err.name!r}, which is not "
                f"installed in this environment; install it with: {INSTALL[name]}"
            ) from err
        raise


def export(namespace):
    """Import a backend's modules and put every name of the contract into its package.

    `namespace` is the backend package's globals(); returns the names for its __all__.
    A name the backend lacks stays missing (tests/test_api.py reports it).
    """
    from d2lattn import api

    package = namespace["__name__"]
    modules = [importlib.import_module(f"{package}.{m}") for m in MODULES]
    modules += [importlib.import_module(m) for m in SHARED]
    for name in api.__all__:
        found = next((vars(m)[name] for m in modules if name in vars(m)), None)
        if found is not None:
            namespace[name] = found
    return [name for name in api.__all__ if name in namespace]


def available():
    """{backend: framework version, or None where it cannot be imported}.

    Looks the frameworks up without importing them (importing TensorFlow
    alone takes seconds).
    """
    versions = {}
    for name, modules in FRAMEWORKS.items():
        found = all(importlib.util.find_spec(m) is not None for m in modules)
        versions[name] = _version(DISTRIBUTIONS[name]) if found else None
    return versions


def _version(distributions):
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
