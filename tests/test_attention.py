"""attention: DotProductAttention, AdditiveAttention, MultiHeadAttention (grouped-query heads
included) and ConcatAttention on the backend under test.

Beyond the harness (tests/cases.py): random calls against the reference, grouped-query heads as
repeated key/value heads, empty rows and saturation, dropout and the training mode, soft-capping
(tends to the identity as the cap grows, bounds a row's spread) and sinks (never add weight, take
the same share of every key, leave an empty row zeros), and bad input.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference
from tests.modes import RATE, assert_inverted, dropout_tests
from tests.strategies import PROFILE, SIZES, agree, calls, restriction
from tests.support import bad_input_test, ints, random_params, t

# --- against the reference on random calls --------------------------------------------------

# (num_kv_heads, query heads per key/value head, head size): one head, one group of three,
# two groups of two, three heads of their own (few shapes: tests/strategies.py)
GROUPS = [(1, 1, 1), (1, 3, 2), (2, 2, 1), (3, 1, 2)]


@pytest.mark.against_reference
@pytest.mark.parametrize("component", ["DotProductAttention", "AdditiveAttention", "MultiHeadAttention"])
@PROFILE
@given(data=st.data())
def test_agrees_with_reference(d2l, component, data):
    """Random shapes, sizes, lengths (0 and beyond the key count included), masks and weights."""
    agree(d2l, component, data.draw(calls(component), label="call"))


@PROFILE
@given(data=st.data())
def test_grouped_query_heads_are_repeated_key_value_heads(d2l, data):
    """num_kv_heads=kv equals full multi-head attention whose W_k, W_v (and b_k, b_v) repeat each key/value
    head's columns for the num_heads // kv query heads of its group (head h uses h // group)."""
    kv, group, dh = data.draw(st.sampled_from(GROUPS), label="num_kv_heads, group, head_size")
    heads, (b, q, k) = kv * group, data.draw(st.sampled_from(SIZES), label="b, q, k")
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


# --- numbers at the edges ---------------------------------------------------------------------


def test_empty_rows_through_attention(d2l):
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 6))
    attention = d2l.DotProductAttention()
    out, grads, _ = d2l.value_and_grads(attention, [q, k, v], rng.normal(size=(2, 3, 6)),
                                        valid_lens=np.array([0, 5], np.int32), training=False)
    assert all(np.all(np.isfinite(g)) for g in [out, *grads])
    assert np.all(out[0] == 0) and np.all(grads[0][0] == 0)        # the empty sequence: zeros, no gradient


def test_saturated_additive_attention_has_finite_gradients(d2l):
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(2, 3, 4)) * 1e3, rng.normal(size=(2, 5, 4)) * 1e3, rng.normal(size=(2, 5, 6))
    attention = d2l.AdditiveAttention(4, 4, 8)
    out, grads, param_grads = d2l.value_and_grads(attention, [q, k, v], rng.normal(size=(2, 3, 6)),
                                                  valid_lens=np.array([2, 5], np.int32), training=False)
    assert all(np.all(np.isfinite(g)) for g in [out, *grads, *param_grads.values()])


# --- dropout and the training mode ------------------------------------------------------------

test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused = dropout_tests("attention")


@pytest.mark.needs("dropout")
def test_attention_dropout_is_inverted(d2l):
    """Over identity values, a dot-product attention's output is its (dropped) weights."""
    k = 64
    rng = np.random.default_rng(0)
    q, keys = d2l.tensor(rng.normal(size=(4, 16, 8))), d2l.tensor(rng.normal(size=(4, k, 8)))
    values = d2l.tensor(np.broadcast_to(np.eye(k), (4, k, k)).copy())
    attention = d2l.DotProductAttention(dropout=RATE)
    full = d2l.to_numpy(attention(q, keys, values, training=False))
    assert_inverted(d2l.to_numpy(attention(q, keys, values, training=True)), full)


# --- bad input --------------------------------------------------------------------------------


def dot(d2l, q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), **kwargs):
    return d2l.DotProductAttention()(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


def additive(d2l, q=(2, 3, 4), k=(2, 5, 7), v=(2, 5, 6)):
    return d2l.AdditiveAttention(4, 7, 8)(t(d2l, *q), t(d2l, *k), t(d2l, *v))


def mha(d2l, q=(2, 3, 8), k=(2, 5, 8), v=(2, 5, 8), **kwargs):
    return d2l.MultiHeadAttention(8, 2)(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


def concat(d2l, q=(2, 3, 3), k=(2, 3, 4), v=(2, 5, 2)):
    return d2l.ConcatAttention(3, 4, 5, 2, 6)(t(d2l, *q), t(d2l, *k), t(d2l, *v))


BAD_INPUT = {
    "call logit_cap negative": (lambda d2l: d2l.DotProductAttention()(t(d2l, 2, 3, 4), t(d2l, 2, 5, 4),
                                                                      t(d2l, 2, 5, 2), logit_cap=-0.5),
                                ValueError, r"logit_cap must be None or a positive number .* got -0.5"),
    "sinks of the wrong shape": (lambda d2l: d2l.DotProductAttention()(t(d2l, 2, 3, 4), t(d2l, 2, 5, 4),
                                                                       t(d2l, 2, 5, 2), sinks=t(d2l, 4)),
                                 ValueError, r"sinks of shape \(4,\) do not broadcast to the scores' rows \(2, 3\) "
                                             r"\(one sink logit per query row\)"),
    # valid_lens and masks in a call
    "lens batch size": (lambda d2l: dot(d2l, valid_lens=ints(d2l, 1, 2, 3)), ValueError,
                        r"valid_lens must have shape \(batch,\) = \(2,\) or \(batch, queries\) = \(2, 3\), got \(3,\)"),
    "lens fractional in a call": (lambda d2l: dot(d2l, valid_lens=d2l.tensor([[1, 2.5, 3], [1, 1, 1]])), ValueError,
                                  r"valid_lens must hold whole numbers of keys, got a fractional length 2.5"),
    "mha mask shape": (lambda d2l: mha(d2l, mask=d2l.causal_mask(3, 3)), ValueError,
                       r"mask of shape \(3, 3\) does not broadcast to the scores' shape \(2, 3, 5\)"),
    "dot score bias": (lambda d2l: dot(d2l, score_bias=t(d2l, 4, 5)), ValueError,
                       r"score_bias of shape \(4, 5\) does not broadcast to the scores' shape \(2, 3, 5\)"),
    "mha score bias": (lambda d2l: mha(d2l, score_bias=t(d2l, 3, 3, 5)), ValueError,
                       r"score_bias of shape \(3, 3, 5\) does not broadcast to the scores' shape \(2, 2, 3, 5\)"),
    # inputs
    "dot feature sizes": (lambda d2l: dot(d2l, k=(2, 5, 3)), ValueError,
                          r"queries and keys must have the same feature size .* got queries \(2, 3, 4\) "
                          r"and keys \(2, 5, 3\)"),
    "keys and values count": (lambda d2l: dot(d2l, v=(2, 4, 6)), ValueError,
                              r"keys and values must have the same number of positions"),
    "batch sizes": (lambda d2l: dot(d2l, k=(3, 5, 4), v=(3, 5, 6)), ValueError,
                    r"queries, keys and values must have the same batch size"),
    "dot rank": (lambda d2l: dot(d2l, q=(3, 4)), ValueError,
                 r"queries must have 3 axes \(batch, queries, features\), got shape \(3, 4\)"),
    "additive rank": (lambda d2l: additive(d2l, k=(2, 1, 5, 7)), ValueError,
                      r"keys must have 3 axes \(batch, keys, features\), got shape \(2, 1, 5, 7\)"),
    "additive query size": (lambda d2l: additive(d2l, q=(2, 3, 5)), ValueError,
                            r"queries must have 4 features \(last axis\), the query_size this module was built with"),
    "mha rank": (lambda d2l: mha(d2l, v=(2, 5)), ValueError, r"values must have 3 axes"),
    "mha value size": (lambda d2l: mha(d2l, v=(2, 5, 6)), ValueError,
                       r"values must have 8 features \(last axis\), the value_size"),
    "concat queries": (lambda d2l: concat(d2l, q=(2, 3, 4)), ValueError,
                       r"queries must have shape \(batch, queries, query_size\) = \(\?, \?, 3\), got \(2, 3, 4\)"),
    "concat keys": (lambda d2l: concat(d2l, k=(2, 5, 4)), ValueError,
                    r"keys must have shape \(batch, queries, key_size\), one key per query = \(2, 3, 4\), "
                    r"got \(2, 5, 4\)"),
    "concat values": (lambda d2l: concat(d2l, v=(2, 6, 2)), ValueError,
                      r"values must have shape \(batch, num_values, value_size\) = \(2, 5, 2\), got \(2, 6, 2\)"),
    # constructors
    "hiddens zero": (lambda d2l: d2l.MultiHeadAttention(0, 1), ValueError,
                     r"num_hiddens must be a positive integer, got 0"),
    "hiddens not int": (lambda d2l: d2l.MultiHeadAttention(8.0, 2), ValueError,
                        r"num_hiddens must be a positive integer, got 8.0"),
    "heads zero": (lambda d2l: d2l.MultiHeadAttention(8, 0), ValueError,
                   r"num_heads must be a positive integer, got 0"),
    "heads bool": (lambda d2l: d2l.MultiHeadAttention(8, True), ValueError,
                   r"num_heads must be a positive integer, got True"),
    "heads not dividing hiddens": (lambda d2l: d2l.MultiHeadAttention(10, 3), ValueError,
                                   r"num_hiddens \(10\) must be divisible by num_heads \(3\)"),
    "query size": (lambda d2l: d2l.MultiHeadAttention(8, 2, query_size=-3), ValueError,
                   r"query_size must be a positive integer, got -3"),
    "additive hiddens": (lambda d2l: d2l.AdditiveAttention(4, 4, "8"), ValueError,
                         r"num_hiddens must be a positive integer, got '8'"),
    "additive key size": (lambda d2l: d2l.AdditiveAttention(3, 4.5, 5), ValueError,
                          r"key_size must be a positive integer, got 4.5"),
    "dropout negative": (lambda d2l: d2l.MultiHeadAttention(8, 2, dropout=-0.1), ValueError,
                         r"dropout must be a number in \[0, 1\), got -0.1"),
    "dropout one": (lambda d2l: d2l.AdditiveAttention(4, 4, 8, dropout=1), ValueError,
                    r"dropout must be a number in \[0, 1\), got 1"),
    "dot dropout one": (lambda d2l: d2l.DotProductAttention(dropout=1.0), ValueError,
                        r"dropout must be a number in \[0, 1\), got 1.0"),
    "kv heads not dividing": (lambda d2l: d2l.MultiHeadAttention(8, 4, num_kv_heads=3), ValueError,
                              r"num_kv_heads \(3\) must divide num_heads \(4\)"),
    "kv heads zero": (lambda d2l: d2l.MultiHeadAttention(8, 4, num_kv_heads=0), ValueError,
                      r"num_kv_heads must be a positive integer, got 0"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- soft-capping and attention sinks (Gemma 2, gpt-oss) ------------------------------------------

FEW = settings(PROFILE, max_examples=10)
SHAPES = st.sampled_from([(1, 3, 4, 4), (2, 4, 6, 8)])   # (b, q, k, d): few, so JAX compiles little


def attention_inputs(d2l, seed, shape):
    """queries, keys, values (float32 tensors), a random mask with an empty row, and sink logits (b, q)."""
    b, q, k, d = shape
    rng = np.random.default_rng(seed)
    Q, K, V = (rng.normal(size=s).astype(np.float32) for s in ((b, q, d), (b, k, d), (b, k, d)))
    mask = rng.random((b, q, k)) < 0.6
    mask[0, 0] = False                                                          # nothing to attend to
    sinks = (3 * rng.normal(size=(b, q))).astype(np.float32)
    return (*(d2l.tensor(x) for x in (Q, K, V)), d2l.tensor(mask), d2l.tensor(sinks)), mask


@FEW
@given(seed=st.integers(0, 2**16), shape=SHAPES)
def test_a_sink_never_adds_weight_and_takes_the_same_share_of_every_key(d2l, seed, shape):
    (Q, K, V, mask, sinks), keep = attention_inputs(d2l, seed, shape)
    attention = d2l.DotProductAttention()
    plain_out = d2l.to_numpy(attention(Q, K, V, mask=mask, training=False))
    plain = d2l.to_numpy(attention.attention_weights)
    out = d2l.to_numpy(attention(Q, K, V, mask=mask, sinks=sinks, training=False))
    weights = d2l.to_numpy(attention.attention_weights)                         # (b, q, k)
    total = weights.sum(-1, keepdims=True)                                      # what the sink leaves the keys
    assert np.all(weights <= plain + 1e-6) and np.all(total <= 1 + 1e-6)
    np.testing.assert_allclose(weights, plain * total, atol=1e-6)              # every key scaled alike
    empty = ~keep.any(-1)                                                       # (b, q): rows with no key
    assert empty.any() and np.all(weights[empty] == 0) and np.all(out[empty] == 0)
    assert np.all(np.abs(out) <= np.abs(plain_out).max() + 1e-5)


@FEW
@given(seed=st.integers(0, 2**16), shape=SHAPES)
def test_soft_capping_tends_to_the_identity_as_the_cap_grows(d2l, seed, shape):
    (Q, K, V, mask, _), _ = attention_inputs(d2l, seed, shape)
    Q = Q * 3                                                                   # scores of a few units
    attention = d2l.DotProductAttention()
    plain = d2l.to_numpy(attention(Q, K, V, mask=mask, training=False))
    errors = [np.abs(d2l.to_numpy(attention(Q, K, V, mask=mask, logit_cap=cap, training=False)) - plain).max()
              for cap in (3.0, 30.0, 3e4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 1e-5, errors


@pytest.mark.parametrize("cap", [0.1, 1.0])
def test_a_cap_bounds_how_far_apart_two_weights_of_a_row_can_be(d2l, cap):
    """Capped scores lie in (-cap, cap): no weight exceeds another of its row by more than e^(2 cap)."""
    attention = d2l.DotProductAttention()
    attention(t(d2l, 2, 3, 4) * 10, t(d2l, 2, 5, 4), t(d2l, 2, 5, 2), logit_cap=cap, training=False)
    weights = d2l.to_numpy(attention.attention_weights)
    assert np.all(weights.max(-1) / weights.min(-1) <= np.exp(2 * cap) * (1 + 1e-5))
