"""Property-based agreement with the reference: random shapes, sizes, lengths (0 and beyond
the key count included), masks and weights, for the four attention components; then the properties of
rotary positions, grouped-query heads and the K/V cache (each backend against itself and the reference).

The profile is fixed (derandomized, no example database), so CI runs the same
EXAMPLES examples per component on every backend, every time.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference

EXAMPLES = 100
settings.register_profile("d2lattn", max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile("d2lattn")


@st.composite
def restriction(draw, b, q, k, rng):
    """(valid_lens or None, mask or None): NumPy arrays over (b, q, k) scores."""
    lens = draw(st.sampled_from([None, "sequence", "query"]))
    if lens is not None:
        lens = rng.integers(0, k + 2, size=(b,) if lens == "sequence" else (b, q)).astype(np.int32)
    mask = draw(st.sampled_from([None, "random", "causal"]))
    if mask == "random":
        mask = rng.random((b, q, k)) < 0.7
    elif mask == "causal":
        mask = reference.causal_mask(q, k)
    return lens, mask


@st.composite
def calls(draw, component):
    """(constructor args or None, inputs, valid_lens, mask) for one random call of `component`."""
    b, q, k = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lens, mask = draw(restriction(b, q, k, rng))
    if component == "masked_softmax":
        return None, [rng.normal(size=(b, q, k)) * draw(st.sampled_from([1.0, 10.0]))], lens, mask
    dv = draw(st.integers(1, 5))
    if component == "DotProductAttention":
        d = draw(st.integers(1, 6))
        return {}, [rng.normal(size=(b, q, d)), rng.normal(size=(b, k, d)), rng.normal(size=(b, k, dv))], lens, mask
    qs, ks = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if component == "AdditiveAttention":
        args = {"query_size": qs, "key_size": ks, "num_hiddens": draw(st.integers(1, 8))}
    else:
        heads = draw(st.integers(1, 3))
        args = {"num_hiddens": heads * draw(st.integers(1, 3)), "num_heads": heads, "bias": draw(st.booleans()),
                "query_size": qs, "key_size": ks, "value_size": dv}
    return args, [rng.normal(size=(b, q, qs)), rng.normal(size=(b, k, ks)), rng.normal(size=(b, k, dv))], lens, mask


def agree(d2l, component, call):
    args, inputs, lens, mask = call
    kwargs = {"mask": None if mask is None else d2l.tensor(mask)}
    ref_fn, fn = getattr(reference, component), getattr(d2l, component)
    if args is not None:
        ref_fn, fn = ref_fn(**args), fn(**args)
        shapes = reference.get_params(ref_fn)
        rng = np.random.default_rng(len(shapes))
        params = {n: rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0]) for n, p in shapes.items()}
        reference.set_params(ref_fn, params)
        d2l.set_params(fn, params)
        kwargs["training"] = False
    want = ref_fn(*inputs, lens, **{**kwargs, "mask": mask})
    got = fn(*[d2l.tensor(x) for x in inputs], None if lens is None else d2l.tensor(lens), **kwargs)
    np.testing.assert_allclose(d2l.to_numpy(got), want, atol=1e-5)
    if args is not None:
        np.testing.assert_allclose(d2l.to_numpy(fn.attention_weights), ref_fn.attention_weights, atol=1e-5)


COMPONENTS = ["masked_softmax", "DotProductAttention", "AdditiveAttention", "MultiHeadAttention"]


@pytest.mark.against_reference
@pytest.mark.parametrize("component", COMPONENTS)
@PROFILE
@given(data=st.data())
def test_agrees_with_reference(d2l, component, data):
    agree(d2l, component, data.draw(calls(component), label="call"))



# --- modern attention (issue 13): each backend against itself under a transformation, and the reference ---


def random_params(module, rng):
    """Canonical parameters of the reference `module`'s shapes, drawn from `rng`."""
    return {n: rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0]) for n, p in reference.get_params(module).items()}


@PROFILE
@given(data=st.data())
def test_rotated_scores_depend_only_on_the_distance(d2l, data):
    """q . k after RoPE depends on the positions only through their difference: shifting queries and
    keys by the same amount (through `offset`) leaves every score as it was; the reference fixes the
    scores themselves (an offset that is ignored would pass the first check, not the second)."""
    head_size, t = 2 * data.draw(st.integers(1, 4), label="pairs"), data.draw(st.integers(1, 4), label="t")
    args = {"head_size": head_size, "base": data.draw(st.sampled_from([10000.0, 100.0, 10.0]), label="base"),
            "interleaved": data.draw(st.booleans(), label="interleaved")}
    at_q, at_k, shift = (data.draw(st.integers(-20, 60), label=n) for n in ("query offset", "key offset", "shift"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    Q, K = rng.normal(size=(t, head_size)), rng.normal(size=(t + 1, head_size))
    rope, ref = d2l.RotaryPositionalEncoding(**args), reference.RotaryPositionalEncoding(**args)

    def scores(lib, module, shift):
        q = lib.to_numpy(module(lib.tensor(Q), offset=at_q + shift))  # rows at at_q + shift, at_q + shift + 1, ...
        k = lib.to_numpy(module(lib.tensor(K), offset=at_k + shift))
        return q @ k.T                                                 # (t, t + 1)

    ours = scores(d2l, rope, 0)
    np.testing.assert_allclose(ours, scores(reference, ref, 0), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(scores(d2l, rope, shift), ours, atol=1e-4, rtol=1e-5)


@PROFILE
@given(data=st.data())
def test_grouped_query_heads_are_repeated_key_value_heads(d2l, data):
    """num_kv_heads=kv equals full multi-head attention whose W_k, W_v (and b_k, b_v) repeat each key/value
    head's columns for the num_heads // kv query heads of its group (head h uses h // group)."""
    kv, group = (data.draw(st.integers(1, 3), label=n) for n in ("num_kv_heads", "group"))
    dh = data.draw(st.integers(1, 2), label="head_size")  # few distinct shapes: JAX compiles each op per shape
    heads, b = kv * group, data.draw(st.integers(1, 3), label="b")
    q, k = data.draw(st.integers(1, 4), label="q"), data.draw(st.integers(1, 5), label="k")
    args = {"num_hiddens": heads * dh, "num_heads": heads, "bias": data.draw(st.booleans(), label="bias"),
            **{n: data.draw(st.sampled_from([2, 5]), label=n) for n in ("query_size", "key_size", "value_size")}}
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    lens, mask = data.draw(restriction(b, q, k, rng), label="restriction")
    bias = data.draw(st.sampled_from([None, (heads, q, k), (b, 1, q, k), (q, 1)]), label="score_bias shape")
    bias = None if bias is None else rng.normal(size=bias)
    ref = reference.MultiHeadAttention(**args, num_kv_heads=kv)
    params = random_params(ref, rng)
    reference.set_params(ref, params)

    def repeat(w):  # (..., kv * dh) -> (..., heads * dh): each key/value head's columns `group` times
        return np.repeat(w.reshape(*w.shape[:-1], kv, dh), group, axis=-2).reshape(*w.shape[:-1], heads * dh)

    repeated = {n: repeat(p) if n[-1] in "kv" else p for n, p in params.items()}
    gqa, mha = d2l.MultiHeadAttention(**args, num_kv_heads=kv), d2l.MultiHeadAttention(**args)
    d2l.set_params(gqa, params)
    d2l.set_params(mha, repeated)
    inputs = [rng.normal(size=(b, n, args[f"{x}_size"])) for n, x in ((q, "query"), (k, "key"), (k, "value"))]
    want = ref(*inputs, lens, mask=mask, score_bias=bias, training=False)

    def run(module):
        native = [None if x is None else d2l.tensor(x) for x in (*inputs, lens, mask, bias)]
        out = module(*native[:4], mask=native[4], score_bias=native[5], training=False)
        return d2l.to_numpy(out), d2l.to_numpy(module.attention_weights)

    (got, weights), (same, same_weights) = run(gqa), run(mha)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(weights, ref.attention_weights, atol=1e-5)
    np.testing.assert_allclose(same, got, atol=1e-5)
    np.testing.assert_allclose(same_weights, weights, atol=1e-5)


@PROFILE
@given(data=st.data())
def test_cached_pieces_equal_the_full_pass(d2l, data):
    """CausalSelfAttention fed a sequence in pieces (random split points), the cache passed on, gives the
    full pass's outputs, its cache, and the full pass's attention rows for the last piece."""
    kv, group = data.draw(st.integers(1, 2), label="num_kv_heads"), data.draw(st.integers(1, 3), label="group")
    heads, dh = kv * group, 2 * data.draw(st.integers(1, 2), label="head_size / 2")
    T, b = data.draw(st.integers(1, 7), label="T"), data.draw(st.integers(1, 2), label="b")
    args = {"num_hiddens": heads * dh, "num_heads": heads, "num_kv_heads": kv,
            "window": data.draw(st.none() | st.integers(1, T + 1), label="window"),
            "rope_base": data.draw(st.sampled_from([10000.0, 100.0, None]), label="rope_base"),
            "bias": data.draw(st.booleans(), label="bias")}
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1)), label="split points")) if T > 1 else []
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    ref = reference.CausalSelfAttention(**args)
    params = random_params(ref, rng)
    reference.set_params(ref, params)
    csa = d2l.CausalSelfAttention(**args)
    d2l.set_params(csa, params)
    X = rng.normal(size=(b, T, heads * dh))
    want, want_cache = ref(X, training=False)
    full, cache = csa(d2l.tensor(X), training=False)
    full, full_weights = d2l.to_numpy(full), d2l.to_numpy(csa.attention_weights)
    np.testing.assert_allclose(full, want, atol=1e-5)
    for ours, theirs in zip(cache, want_cache):
        np.testing.assert_allclose(d2l.to_numpy(ours), theirs, atol=1e-5)
    outs, cache = [], None
    for start, stop in zip([0] + cuts, cuts + [T]):
        out, cache = csa(d2l.tensor(X[:, start:stop]), cache=cache, training=False)
        outs.append(d2l.to_numpy(out))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5)
    for ours, theirs in zip(cache, want_cache):
        np.testing.assert_allclose(d2l.to_numpy(ours), theirs, atol=1e-5)
    last = full_weights[:, :, T - outs[-1].shape[1]:]                 # the full pass's rows of the last piece
    np.testing.assert_allclose(d2l.to_numpy(csa.attention_weights), last, atol=1e-5)
