"""Hypothesis' profile and the random calls the property tests draw.

The profile is fixed (derandomized, no example database), so CI runs the same EXAMPLES examples
per property on every backend, every time.

Sizes come from a few fixed sets (SIZES, FEATURES), not from ranges: eager JAX (and a Keras
layer's first build) compiles every operation once per new shape, so a hundred examples of a
hundred shapes compile a hundred times, while the few shapes below are compiled once and then
draw new values, lengths and masks. The sets keep the edges the ranges had: one query, one key,
more queries than keys and fewer, one sequence and three, features of size 1.
"""

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference
from tests.support import random_params

EXAMPLES = 100
settings.register_profile("d2lattn", max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile("d2lattn")

SIZES = [(1, 1, 1), (2, 3, 5), (3, 5, 2), (1, 4, 4), (2, 1, 6)]  # (batch, queries, keys)
FEATURES = [(1, 1, 1), (4, 3, 5), (6, 5, 2)]                     # sizes of the queries, keys and values
HEADS = [(1, 1), (3, 1), (2, 3)]                                  # (heads, hidden size per head)


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
    """(constructor args or None, inputs, valid_lens, mask) for one random call of `component`
    (masked_softmax or one of the attention modules)."""
    b, q, k = draw(st.sampled_from(SIZES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lens, mask = draw(restriction(b, q, k, rng))
    if component == "masked_softmax":
        return None, [rng.normal(size=(b, q, k)) * draw(st.sampled_from([1.0, 10.0]))], lens, mask
    qs, ks, dv = draw(st.sampled_from(FEATURES))
    if component == "DotProductAttention":  # queries and keys share their size
        return {}, [rng.normal(size=(b, q, qs)), rng.normal(size=(b, k, qs)), rng.normal(size=(b, k, dv))], lens, mask
    if component == "AdditiveAttention":
        args = {"query_size": qs, "key_size": ks, "num_hiddens": draw(st.sampled_from([1, 8]))}
    else:
        heads, size = draw(st.sampled_from(HEADS))
        args = {"num_hiddens": heads * size, "num_heads": heads, "bias": draw(st.booleans()),
                "query_size": qs, "key_size": ks, "value_size": dv}
    return args, [rng.normal(size=(b, q, qs)), rng.normal(size=(b, k, ks)), rng.normal(size=(b, k, dv))], lens, mask


def agree(d2l, component, call):
    """The backend's `component` on a drawn call equals the reference's (and so do the attention weights)."""
    args, inputs, lens, mask = call
    kwargs = {"mask": None if mask is None else d2l.tensor(mask)}
    ref_fn, fn = getattr(reference, component), getattr(d2l, component)
    if args is not None:
        ref_fn, fn = ref_fn(**args), fn(**args)
        params = random_params(ref_fn, np.random.default_rng(len(reference.get_params(ref_fn))))
        reference.set_params(ref_fn, params)
        d2l.set_params(fn, params)
        kwargs["training"] = False
    want = ref_fn(*inputs, lens, **{**kwargs, "mask": mask})
    got = fn(*[d2l.tensor(x) for x in inputs], None if lens is None else d2l.tensor(lens), **kwargs)
    np.testing.assert_allclose(d2l.to_numpy(got), want, atol=1e-5)
    if args is not None:
        np.testing.assert_allclose(d2l.to_numpy(fn.attention_weights), ref_fn.attention_weights, atol=1e-5)
