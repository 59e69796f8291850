"""Every module of the contract under the framework's own transformations, as its users apply them.

A closure over a module (or the module passed in, where the framework lifts its state) goes
through each transformation the backend's test adapter lists (tests/adapters/: jax.jit,
torch.compile, torch.export, the vmaps, the grads, ...), and must give what the eager call gives:
the same outputs, one eager call's outputs per mapped example, the same gradients with respect
to every float input as `value_and_grads`. Afterwards `.attention_weights` still reads: the
weights of the eager call, or of each mapped example, or nothing (None) where the transformation
lets the module keep nothing. A module is covered by its entry in MODULES; a module of the
contract without one fails test_every_module_is_listed.
"""

import dataclasses
import inspect

import numpy as np
import pytest

from d2lattn import api
from tests import harness
from tests.cases import B, Case

# float32 on both sides, the same operations, compiled or not
TOLERANCE = 1e-5

# Seq2SeqAttentionDecoder, called on the encoder's outputs and state directly (see _from_state)
DECODER = Case("decoder-from-state", "Seq2SeqAttentionDecoder", ((B, 4, 4), (2, B, 4)),
               {"vocab_size": 5, "embed_size": 3, "num_hiddens": 4, "num_layers": 2},
               tokens=(("X", (B, 3), 5),), valid_lens=(2, 9), lens_arg="enc_valid_lens", seed=60)

# TransformerLM's next step from a cache given as input: its float inputs are the keys and the
# values of its 2 blocks, (b, kv_heads, t, head_size) each (see _from_cache)
LM_STEP = Case("lm-step-from-cache", "TransformerLM", ((B, 2, 3, 2),) * 4,
               {"vocab_size": 7, "num_hiddens": 8, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 6,
                "num_kv_heads": 2}, tokens=(("tokens", (B, 2), 7),), seed=61)

# Every module of the contract, each by a case that builds and calls it (tests/cases.py), chosen
# for its lengths, masks, keyword inputs and caches; the cases of tests/cases.py feed a cached
# module its sequence in pieces, LM_STEP passes the cache in from outside.
MODULES = [harness.CASE_BY_NAME[name] for name in (
    "dot-bias-broadcast-lens-mask", "additive-lens2d-mask", "mha-cross-mask", "posenc-even", "rope-halves-offset",
    "concat-lens2d", "layernorm", "ffn", "rmsnorm", "swiglu", "addnorm", "encoder-block", "decoder-block",
    "gru-2layers-state", "seq2seq-encoder", "seq2seq-lens", "csa-cache-pieces", "lm-gqa-window-pieces",
    "transformer-encoder", "transformer-decoder-steps",
    "patch-embedding", "vit-block-bias-lens", "vit",
    "gdn-sizes-pieces", "mla-absorbed-pieces",
)] + [DECODER, LM_STEP]
IDS = [case.name for case in MODULES]
# The modules built on the GRU, which a framework may not map (_backend.LACKS: "vmap GRU")
RECURRENT = ("GRU", "Seq2SeqEncoder", "Seq2SeqAttentionDecoder", "Seq2Seq")


def _from_state(cls):
    """The decoder's class with a call that takes (enc_outputs, enc_state) first and builds its
    state with init_state, returning the logits: one call of arrays, like every other module."""

    def __call__(self, enc_outputs, enc_state, X, enc_valid_lens=None, **kwargs):
        state = self.init_state(enc_outputs, enc_state, enc_valid_lens)
        return super(adapted, self).__call__(X, state, **kwargs)[0]           # (b, T, vocab)

    adapted = type(cls.__name__, (cls,), {"__call__": __call__})
    return adapted


def _from_cache(cls):
    """TransformerLM's class with a call that takes its cache as arrays, the keys and the values
    of each block in turn, and returns the logits and the new cache's arrays as one flat tuple."""

    def __call__(self, *cache, tokens, **kwargs):
        logits, caches = super(adapted, self).__call__(tokens, cache=list(zip(cache[::2], cache[1::2])), **kwargs)
        return (logits, *harness._leaves(caches))                             # (b, T, vocab), then the cache

    adapted = type(cls.__name__, (cls,), {"__call__": __call__})
    return adapted


CALLS = {DECODER.name: _from_state, LM_STEP.name: _from_cache}
FROM_STATE = (DECODER.name, "transformer-decoder-steps")  # decoders whose own call takes a state made by init_state


def _build(d2l, case):
    """(module, float inputs, token inputs, a function `call(module, *floats, *tokens)`), in the
    backend's own arrays; lengths, masks and `training` are bound in the function."""
    inputs, kwargs, params = harness.make_call(case)
    cls = CALLS[case.name](getattr(d2l, case.component)) if case.name in CALLS else harness.module_class(d2l, case.name)
    module = cls(**case.args)
    d2l.set_params(module, params)
    names = [name for name, _, _ in case.tokens]
    tokens = [d2l.tensor(kwargs.pop(name)) for name in names]
    kwargs = {k: v if v is None or isinstance(v, bool) else d2l.tensor(v) for k, v in kwargs.items()}

    def call(module, *arrays):
        split = len(arrays) - len(names)
        return module(*arrays[:split], **dict(zip(names, arrays[split:])), **kwargs)

    return module, [d2l.tensor(x) for x in inputs], tokens, call


def _numpy(d2l, out):
    return [d2l.to_numpy(leaf) for leaf in harness._leaves(out)]


def _transforms(adapter, capability):
    found = {name: transform for name, (kind, transform) in adapter.transforms().items() if kind == capability}
    assert found, f"the adapter lists no {capability} transformation; a backend without one declares so in LACKS"
    return found


def _close(got, want, what):
    assert len(got) == len(want), f"{what}: {len(got)} arrays, the eager call gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what}, array {i}: shape {g.shape}, the eager call gives {w.shape}"
        gap = float(np.max(np.abs(g - w), initial=0.0))
        assert gap <= TOLERANCE, f"{what}, array {i}: max abs difference {gap:.2e} from the eager call"


def _weights(d2l, module):
    weights = getattr(module, "attention_weights", None)
    if isinstance(weights, list):  # one per block (ViT), side by side along the keys: a mapped axis stays first
        return None if any(w is None for w in weights) else np.concatenate([d2l.to_numpy(w) for w in weights], -1)
    return None if weights is None else d2l.to_numpy(weights)


def test_every_module_is_listed():
    modules = {name for name in api.__all__ if inspect.isclass(getattr(api, name))}
    listed = {case.component for case in MODULES}
    assert listed == modules, f"MODULES lacks {sorted(modules - listed)}; it lists {sorted(listed - modules)} too many"


@pytest.mark.needs("compiled")
@pytest.mark.parametrize("case", MODULES, ids=IDS)
def test_compiled_call_equals_eager(d2l, adapter, case):
    module, floats, tokens, call = _build(d2l, case)
    want = _numpy(d2l, call(module, *floats, *tokens))
    weights = _weights(d2l, module)
    for name, transform in _transforms(adapter, "compiled").items():
        _close(_numpy(d2l, transform(call, module)(*floats, *tokens)), want, f"{case.component} under {name}")
        if weights is not None:  # kept from the eager call, or recorded again from the same inputs
            _close([_weights(d2l, module)], [weights], f"{case.component}.attention_weights after {name}")


@pytest.mark.needs("vmap")
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.needs("vmap GRU")) if c.component in RECURRENT
                                  else c for c in MODULES], ids=IDS)
def test_mapped_call_equals_eager_per_example(d2l, adapter, case):
    """Two examples of the inputs, the second drawn with another seed; lengths and masks shared."""
    _, floats, tokens, _ = _build(d2l, case)
    _, other_floats, other_tokens, _ = _build(d2l, dataclasses.replace(case, seed=case.seed + 1))
    examples = [floats + tokens, other_floats + other_tokens]
    stacked = [d2l.stack(pair) for pair in zip(*examples)]                 # (2, ...) each
    for name, transform in _transforms(adapter, "vmap").items():
        module, _, _, call = _build(d2l, case)                             # with no weights kept yet
        got = _numpy(d2l, transform(call, module)(*stacked))
        mapped_weights = _weights(d2l, module)                             # None, or (2, ...) stacked
        for i, arrays in enumerate(examples):
            want = _numpy(d2l, call(module, *arrays))
            _close([g[i] for g in got], want, f"{case.component} under {name}, example {i}")
            if mapped_weights is not None:                                  # a Transformer's: (blocks, 2, ...)
                example = mapped_weights[:, i] if case.component in harness.STACKED else mapped_weights[i]
                _close([example], [_weights(d2l, module)],
                       f"{case.component}.attention_weights after {name}, example {i}")


@pytest.mark.needs("autodiff")
@pytest.mark.parametrize("case", [c for c in MODULES if c.inputs], ids=[c.name for c in MODULES if c.inputs])
def test_gradients_equal_eager(d2l, adapter, case):
    """d/d every float input of sum(output * projection); token models have no float input."""
    module, floats, tokens, call = _build(d2l, case)
    rng = np.random.default_rng(case.seed + 1000)
    projections = [d2l.tensor(rng.normal(size=o.shape)) for o in _numpy(d2l, call(module, *floats, *tokens))]

    def objective(module, *floats):
        leaves = harness._leaves(call(module, *floats, *tokens))
        # sum(leaf * p) as a dot product of the contract's own ops (a TensorFlow tensor has no .sum())
        return sum(d2l.reshape(d2l.matmul(d2l.reshape(leaf, (1, -1)), d2l.reshape(p, (-1, 1))), ())
                   for leaf, p in zip(leaves, projections))

    inputs, kwargs, _ = harness.make_call(case)
    several = len(projections) > 1
    _, want, _ = d2l.value_and_grads(module, inputs, [d2l.to_numpy(p) for p in projections] if several else
                                     d2l.to_numpy(projections[0]), **kwargs)
    weights = _weights(d2l, module)
    for name, transform in _transforms(adapter, "autodiff").items():
        _close([d2l.to_numpy(g) for g in transform(objective, module)(*floats)], want,
               f"d/d inputs of {case.component} under {name}")
        if weights is not None:
            _close([_weights(d2l, module)], [weights], f"{case.component}.attention_weights after {name}")


def _own_call(d2l, case):
    """(module, arrays, call) for `case` without lengths, masks or pieces, with the component's own
    class (and a dropout rate where it takes one, which a container must keep) and call: keyword
    inputs (a score bias) and tokens by name, the seq2seq decoder's state made by init_state
    inside the call, its lengths kept (they ride in the state it returns, where
    Keras takes no None; its Python loop over time runs outside any graph). The harness's derived
    classes (module_class, _from_state) read their arguments their own way, which a container that
    replays the calls it recorded (a loaded Keras model) would not follow."""
    lengths = case.valid_lens if case.name in FROM_STATE else None
    inputs, kwargs, params = harness.make_call(dataclasses.replace(case, valid_lens=lengths, mask=None, pieces=()))
    cls = getattr(d2l, case.component)
    rate = {"dropout": 0.25} if "dropout" in inspect.signature(cls).parameters else {}  # inactive here, but saved
    module = cls(**case.args, **rate)
    d2l.set_params(module, params)
    split = len(inputs) - len(case.keywords)
    named = {**{name: kwargs.pop(name) for name, _, _ in case.tokens}, **dict(zip(case.keywords, inputs[split:])),
             **({case.lens_arg: kwargs.pop(case.lens_arg)} if lengths else {})}
    flags = {**kwargs, **case.call}                                          # training=False, a RoPE offset

    def call(module, *arrays):
        own, by_name = arrays[:split], dict(zip(named, arrays[split:]))
        if case.name in FROM_STATE:                                         # from the encoder's outputs (and state)
            return module(by_name.pop("X"), module.init_state(*own, by_name.pop(case.lens_arg)), **flags)[0]
        if case.name == LM_STEP.name:                                       # keys and values of each block in turn
            return module(by_name.pop("tokens"), cache=list(zip(own[::2], own[1::2])), **flags)
        return module(*own, **by_name, **flags)

    return module, [d2l.tensor(x) for x in [*inputs[:split], *named.values()]], call


@pytest.mark.needs("container")
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.needs("container cache")) if c is LM_STEP
                                  else c for c in MODULES], ids=IDS)
def test_inside_the_frameworks_own_container(d2l, adapter, case):
    """Inside the framework's own container (a Keras model saved to .keras and loaded back, a
    user's hybridized Gluon block, torch.save and torch.load, nnx.split and nnx.merge), called
    without lengths or masks (a Gluon graph being traced
    has no shapes to make masks from; README), a module gives the eager call's outputs."""
    module, arrays, call = _own_call(d2l, case)
    want = _numpy(d2l, call(module, *arrays))
    for name, transform in _transforms(adapter, "container").items():
        _close(_numpy(d2l, transform(call, module)(*arrays)), want, f"{case.component} in a {name}")
