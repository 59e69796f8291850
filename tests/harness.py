"""Run a harness case on a backend and compare it with the NumPy reference.

`run_case` returns the portable result of one case: the output, the attention
weights (if the component has them) and the gradients of a fixed random
projection of the output with respect to every input and every parameter.
The reference's gradients are float64 central finite differences.
"""

import functools
import hashlib
import inspect
import json
import math
import os
import pathlib
import time

import numpy as np

import d2lattn
from d2lattn import api
from d2lattn import numpy as reference
from tests.cases import CASES, Mod

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "results"
# float32 backends against the float64 reference (max abs error).
TOLERANCE = {"output": 1e-5, "weights": 1e-5, "grad": 1e-4}
MODES = ("eager", "compiled")


def kind(field):
    return field.split(":")[0]


def _mask(case, rng):
    b, q = case.inputs[0][0], case.inputs[0][-2]
    # keys come second in attention; masked_softmax's scores end in the key axis
    k = case.inputs[1][-2] if len(case.inputs) > 1 else case.inputs[0][-1]
    if case.mask == "causal":
        return reference.causal_mask(q, k)
    mask = rng.random((b, q, k)) < 0.6
    mask[0, 0] = False  # always one query with nothing to attend to
    return mask


def make_call(case):
    """(inputs, keyword arguments, parameters) for `case`, all NumPy, the same for every backend."""
    rng = np.random.default_rng(case.seed)
    inputs = [rng.normal(size=shape) for shape in case.inputs]
    for i in case.positive:
        inputs[i] = rng.uniform(0.2, 0.95, case.inputs[i])
    if case.bias == "alibi":
        inputs[-1] = reference.alibi_bias(*case.inputs[-1])  # (heads, q, k)
    kwargs = {name: rng.integers(0, vocab, shape).astype(np.int32) for name, shape, vocab in case.tokens}
    if case.valid_lens is not None:
        kwargs[case.lens_arg] = np.array(case.valid_lens, dtype=np.int32)
    if case.mask is not None:
        kwargs["mask"] = _mask(case, rng)
    params = None
    if case.component[0].isupper():  # a module: evaluation mode, random canonical weights
        if "training" in inspect.signature(getattr(api, case.component).__call__).parameters:
            kwargs["training"] = False
        shapes = {n: p.shape for n, p in reference.get_params(getattr(reference, case.component)(**case.args)).items()}
        params = {n: rng.uniform(-1, 1, shapes[n]) / math.sqrt(shapes[n][0]) for n in sorted(shapes)}
    return inputs, kwargs, params


CACHED = ("CausalSelfAttention", "MultiHeadLatentAttention", "TransformerLM", "GatedDeltaNet")  # return (output, cache)
STACKED = ("TransformerEncoder", "TransformerDecoder")  # modules whose weights are a list, one entry per block


def _stacked_weights(d2l, weights):
    """A Transformer's per-block weights as one array (blocks, b, heads, T, keys): the encoder's
    self-attention, or the decoder's self-attention and encoder-decoder attention side by side."""
    if any(w is None for w in _leaves(weights)):
        return None
    return d2l.stack([d2l.concat(list(w), axis=-1) if isinstance(w, tuple) else w for w in weights], axis=0)


def _leaves(out):
    """The float arrays of an output that nests tuples and lists (a cache), in order: a rolling
    buffer's position (an int, or an int32 scalar) is no output to differentiate."""
    if isinstance(out, (tuple, list)):
        return [leaf for o in out for leaf in _leaves(o)]
    return [] if isinstance(out, int) or "int" in str(getattr(out, "dtype", "")) else [out]


@functools.cache
def module_class(d2l, case_name):
    """The backend's class for a case, or where the case needs it a subclass whose call takes
    `case.keywords` as its last positional inputs (so they are differentiated), binds `case.call`,
    feeds the sequence (the first input) in `case.pieces` passing the cache on and joins the
    outputs, and returns the output and the cache's arrays as one flat tuple. Still the
    framework's own module, so it compiles and its parameters are found as before."""
    case = CASE_BY_NAME[case_name]
    cls = getattr(d2l, case.component)
    if case.component == "TransformerDecoder":
        return _decoder_class(d2l, cls, case)
    if case.component in STACKED:
        return type(cls.__name__, (cls,), {"attention_weights": property(
            lambda self: _stacked_weights(d2l, super(type(self), self).attention_weights))})
    if not (case.keywords or case.call or case.pieces or case.component in CACHED):
        return cls

    def __call__(self, *inputs, **kwargs):
        call = super(adapted, self).__call__
        split = len(inputs) - len(case.keywords)
        inputs, kwargs = list(inputs[:split]), {**kwargs, **dict(zip(case.keywords, inputs[split:])), **case.call}
        if case.pieces:
            sequence = inputs.pop(0) if inputs else kwargs.pop(case.tokens[0][0])  # (b, T, ...)
            outs, cache, start = [], None, 0
            for size in case.pieces:
                out, cache = call(sequence[:, start:start + size], *inputs, cache=cache, **kwargs)
                outs, start = outs + [out], start + size
            out = (d2l.concat(outs, axis=1), cache)
        else:
            out = call(*inputs, **kwargs)
        leaves = _leaves(out)
        return tuple(leaves) if len(leaves) > 1 else leaves[0]

    adapted = type(cls.__name__, (cls,), {"__call__": __call__})
    return adapted


def built(d2l, value):
    """A Mod of the case as the backend's own mod (its Mod arguments built first); anything else as it is."""
    if not isinstance(value, Mod):
        return value
    return getattr(d2l, value.name)(*(built(d2l, arg) for arg in value.args))


def _decoder_class(d2l, cls, case):
    """TransformerDecoder's class with a call that takes the encoder's outputs first (a float input,
    differentiated) and the tokens X by name, makes the state with init_state, feeds X in
    `case.pieces` (the state passed on: step by step after the first piece) or whole, and returns
    the logits joined; its weights stacked as the encoder's (_stacked_weights), of the last piece."""

    def __call__(self, enc_outputs, X, enc_valid_lens=None, **kwargs):
        state, outs, start = self.init_state(enc_outputs, enc_valid_lens), [], 0
        for size in case.pieces or (X.shape[1],):
            out, state = super(adapted, self).__call__(X[:, start:start + size], state, **kwargs)
            outs, start = outs + [out], start + size
        return d2l.concat(outs, axis=1)                                          # (b, T, vocab)

    weights = property(lambda self: _stacked_weights(d2l, super(adapted, self).attention_weights))
    adapted = type(cls.__name__, (cls,), {"__call__": __call__, "attention_weights": weights})
    return adapted


def function(d2l, case):
    """A plain function's call with `case.call` bound (its Mods built by the backend); merge_attention
    takes its parts as positional inputs, the outputs then the lses (so each is differentiated). With
    `case.keywords` the last inputs are passed by those names (a name given twice takes a tuple), and an
    output that nests a state, (out, (S, z)), comes back as the flat tuple of its arrays."""
    fn = getattr(d2l, case.component)
    if case.component == "merge_attention":
        fn = functools.partial(lambda merge, *parts: merge(parts[: len(parts) // 2], parts[len(parts) // 2:]), fn)
    fn = functools.partial(fn, **{k: built(d2l, v) for k, v in case.call.items()}) if case.call else fn
    return functools.partial(_keywords_and_leaves, fn, case.keywords) if case.keywords else fn


def _keywords_and_leaves(fn, names, *inputs, **kwargs):
    split, named = len(inputs) - len(names), {}
    for name, x in zip(names, inputs[split:]):
        named.setdefault(name, []).append(x)
    kwargs.update({name: xs[0] if len(xs) == 1 else tuple(xs) for name, xs in named.items()})
    out = fn(*inputs[:split], **kwargs)
    return tuple(_leaves(out)) if isinstance(out, (tuple, list)) else out


def run_case(d2l, case, mode="eager"):
    """{field: np.ndarray} for one case on backend `d2l`."""
    inputs, kwargs, params = make_call(case)
    fn = function(d2l, case)
    if params is not None:
        fn = module_class(d2l, case.name)(**case.args)
    if params:
        d2l.set_params(fn, params)
    rng = np.random.default_rng(case.seed + 1000)
    shapes = _output_shapes(case.name)
    projection = [rng.normal(size=shape) for shape in shapes] if len(shapes) > 1 else rng.normal(size=shapes[0])
    out, input_grads, param_grads = d2l.value_and_grads(
        fn, inputs, projection, compiled=mode == "compiled", **kwargs)
    result = {f"output:{i}": o for i, o in enumerate(out)} if len(shapes) > 1 else {"output": out}
    weights = getattr(fn, "attention_weights", None)
    if isinstance(weights, list):  # one per block (ViT): stacked, (blocks, b, heads, q, k)
        weights = np.stack([d2l.to_numpy(w) for w in weights])
    if weights is not None:
        result["weights"] = d2l.to_numpy(weights)
    result.update({f"grad:input{i}": g for i, g in enumerate(input_grads)})
    result.update({f"grad:{name}": g for name, g in param_grads.items()})
    return result


@functools.cache
def _output_shapes(case_name):
    """The shapes of a case's outputs: one, or one per element of a tuple output."""
    case = CASE_BY_NAME[case_name]
    inputs, kwargs, params = make_call(case)
    fn = function(reference, case)
    if params is not None:
        fn = module_class(reference, case_name)(**case.args)
        reference.set_params(fn, params)
    out = fn(*inputs, **kwargs)
    return tuple(o.shape for o in _leaves(out)) if isinstance(out, tuple) else (out.shape,)


@functools.cache
def expected(case_name):
    """The reference result of a case (computed once per process)."""
    return run_case(reference, CASE_BY_NAME[case_name])


CASE_BY_NAME = {case.name: case for case in CASES}


def differences(result, want):
    """{field: max abs difference}; a field on one side only is an infinite difference."""
    diffs = {}
    for field in sorted(set(result) | set(want)):
        if field not in result or field not in want or result[field].shape != want[field].shape:
            diffs[field] = math.inf
        else:
            with np.errstate(invalid="ignore"):  # equal infinities (an empty row's lse = -inf) differ by 0
                gap = np.where(result[field] == want[field], 0.0, np.abs(result[field] - want[field]))
            diffs[field] = float(np.max(gap, initial=0.0))
    return diffs


def failures(diffs, scale=1.0):
    """Fields whose difference is above tolerance (times `scale`), or not finite."""
    return {f: d for f, d in diffs.items() if not d <= TOLERANCE[kind(f)] * scale}


# --- results files for crosscheck ---------------------------------------------------


# A TransformerLM each backend's tests/test_decoder.py saves to build/results/<backend>.lm.safetensors,
# with its logits on these tokens in <backend>.lm-logits.npy; crosscheck loads every file into the reference.
LM_FILE = {"args": {"vocab_size": 11, "num_hiddens": 8, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 12,
                    "num_kv_heads": 2, "window": 3},
           "tokens": [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]], "tolerance": 1e-4}


def cases_digest():
    return hashlib.sha256(repr(CASES).encode()).hexdigest()[:16]


def source_digest(backend):
    """Hash of what a backend's results depend on: the shared code, the backend, the harness."""
    files = sorted(ROOT.glob("d2lattn/*.py")) + sorted((ROOT / "d2lattn" / backend).rglob("*.py"))
    files += [ROOT / "tests" / name for name in ("cases.py", "harness.py", "test_train.py", "test_vision.py")]
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:16]


def _flat(results):
    return {f"{key}/{field}": value for key, result in results.items() for field, value in result.items()}


def _nested(data):
    results = {}
    for key in data.files:
        if not key.startswith("__"):
            case, field = key.split("/", 1)
            results.setdefault(case, {})[field] = data[key]
    return results


def write_results(backend, results, kind="harness", **extra):
    """Save {key: result} for `backend` with what crosscheck needs to spot stale files: the
    digests of the cases and the code, and the framework versions it ran under. The harness's
    keys are "<case>@<mode>"; `extra` goes into the metadata (e.g. what was skipped, and why)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"backend": backend, "cases": cases_digest(), "source": source_digest(backend),
            "versions": d2lattn._backend.available(), "written": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    np.savez(RESULTS / f"{backend}.{kind}.npz", __meta__=json.dumps(meta), **_flat(results))


def read_results(backend, kind="harness"):
    """(meta, {key: result}) or None where the file is missing."""
    path = RESULTS / f"{backend}.{kind}.npz"
    if not path.exists():
        return None
    with np.load(path) as data:
        return json.loads(str(data["__meta__"])), _nested(data)


# pytest-xdist spreads the harness cases over its workers: each process saves its share as a part,
# and the process that started them merges the parts into the backend's results when all are done.
PARTS = RESULTS / "parts"


def clear_parts(backend):
    for path in PARTS.glob(f"{backend}.*.npz"):
        path.unlink()


def write_part(backend, results, skipped):
    """This process's harness results ({key: result}) and skipped keys ({key: reason})."""
    PARTS.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    np.savez(PARTS / f"{backend}.{worker}.npz", __skipped__=json.dumps(skipped), **_flat(results))


def merge_parts(backend):
    """Write the backend's harness results from its parts, if together they hold every case run:
    only a complete run is worth comparing."""
    results, skipped = {}, {}
    for path in sorted(PARTS.glob(f"{backend}.*.npz")):
        with np.load(path) as data:
            results.update(_nested(data))
            skipped.update(json.loads(str(data["__skipped__"])))
    clear_parts(backend)
    if len(set(results) | set(skipped)) == len(CASES) * len(MODES):
        write_results(backend, results, skipped=skipped)
