"""linear: linear_attention, gated_delta_rule and GatedDeltaNet on the backend under test.

Beyond the harness (tests/cases.py): the reference is held to the recurrences written out below
(in the paper's (d_v, d_k) layout for the delta rule); on the backend, the forms agree (parallel =
recurrent = chunked for random lengths and chunk sizes), a sequence fed in pieces with the state
passed on equals one pass, the delta rule with beta = 0 only decays its state and with alpha = 1,
beta = 1 writes exactly v k^T on orthonormal keys; the layer's cache does not grow; bad input.
GatedDeltaNet as TransformerLM's layer type: a hybrid stack equals the reference, generates with its
state (of one size throughout), carries its weights through a file and trains.
Shapes are few and small (each new one is a new compile on JAX).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import _checks
from d2lattn import numpy as reference
from tests.support import bad_input_test, portable_lm_init, random_params, t

FEW = settings(max_examples=8, deadline=None, derandomize=True, database=None)
LENGTHS, CHUNKS = (1, 5, 9), (1, 2, 4, 16)   # lengths and chunk sizes the properties draw from


def elu1(x):
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def linear_by_definition(q, k, v):
    """o_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j), one query at a time."""
    q, k = elu1(q), elu1(k)
    out = np.zeros(q.shape[:-1] + v.shape[-1:])
    for i in range(q.shape[-2]):
        w = (q[..., i:i + 1, :] * k[..., :i + 1, :]).sum(-1)             # (..., i + 1)
        out[..., i, :] = (w[..., None] * v[..., :i + 1, :]).sum(-2) / w.sum(-1, keepdims=True)
    return out


def delta_by_definition(q, k, v, alpha, beta, S0):
    """The paper's recurrence with M (d_v, d_k) = S^T: M_t = alpha_t M_{t-1} (I - beta_t k_t k_t^T)
    + beta_t v_t k_t^T, o_t = M_t q_t, on L2-normalised k and q, q scaled by 1/sqrt(d_k); one batch row."""
    norm = lambda x: x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)  # noqa: E731
    q, k = norm(q) / np.sqrt(q.shape[-1]), norm(k)
    M, out = S0.T.copy(), []
    for i in range(len(q)):
        M = alpha[i] * M @ (np.eye(len(k[i])) - beta[i] * np.outer(k[i], k[i])) + beta[i] * np.outer(v[i], k[i])
        out.append(M @ q[i])
    return np.array(out), M.T


def draw(rng, T, dk=3, dv=2, lead=(2,)):
    """queries, keys, values (*lead, T, d), alpha in (0.2, 1], beta in (0, 1) (*lead, T), a state."""
    q, k, v = rng.normal(size=(*lead, T, dk)), rng.normal(size=(*lead, T, dk)), rng.normal(size=(*lead, T, dv))
    return q, k, v, rng.uniform(0.2, 1.0, (*lead, T)), rng.uniform(0, 1, (*lead, T)), rng.normal(size=(*lead, dk, dv))


def test_reference_is_the_definition():
    rng = np.random.default_rng(0)
    for T, chunk in ((1, 1), (6, 4), (9, 2)):
        q, k, v, alpha, beta, S0 = draw(rng, T, lead=(1,))
        for form in ("parallel", "recurrent", "chunked"):
            out = reference.linear_attention(q, k, v, form=form, chunk_size=chunk)
            np.testing.assert_allclose(out, linear_by_definition(q, k, v), atol=1e-12)
        want, want_S = delta_by_definition(q[0], k[0], v[0], alpha[0], beta[0], S0[0])
        for form in ("recurrent", "chunked"):
            out, S = reference.gated_delta_rule(q, k, v, alpha, beta, form=form, chunk_size=chunk, state=S0,
                                                return_state=True)
            np.testing.assert_allclose(out[0], want, atol=1e-12)
            np.testing.assert_allclose(S[0], want_S, atol=1e-12)


def run_linear(d2l, q, k, v, state=None, **kwargs):
    state = None if state is None else tuple(d2l.tensor(s) for s in state)
    out, (S, z) = d2l.linear_attention(d2l.tensor(q), d2l.tensor(k), d2l.tensor(v), state=state, return_state=True,
                                       **kwargs)
    return d2l.to_numpy(out), (d2l.to_numpy(S), d2l.to_numpy(z))


def run_delta(d2l, q, k, v, alpha, beta, state=None, **kwargs):
    out, S = d2l.gated_delta_rule(*(d2l.tensor(x) for x in (q, k, v, alpha, beta)), return_state=True,
                                  state=None if state is None else d2l.tensor(state), **kwargs)
    return d2l.to_numpy(out), d2l.to_numpy(S)


@FEW
@given(T=st.sampled_from(LENGTHS), chunk=st.sampled_from(CHUNKS), feature_map=st.sampled_from(["elu1", "relu"]),
       seed=st.integers(0, 2**16))
def test_linear_forms_agree(d2l, T, chunk, feature_map, seed):
    """parallel = recurrent = chunked, outputs and the state (S, z), from a state carried in."""
    q, k, v, _, _, _ = draw(np.random.default_rng(seed), T)
    state = (np.abs(np.random.default_rng(seed).normal(size=(2, 3, 2))), np.full((2, 3), 0.5))
    got = {form: run_linear(d2l, q, k, v, state, form=form, chunk_size=chunk, feature_map=feature_map)
           for form in ("parallel", "recurrent", "chunked")}
    want = reference.linear_attention(q, k, v, feature_map=feature_map, state=state, return_state=True)
    for form, (out, (S, z)) in got.items():
        np.testing.assert_allclose(out, want[0], atol=1e-5, err_msg=form)
        np.testing.assert_allclose(S, want[1][0], atol=1e-4, err_msg=form)
        np.testing.assert_allclose(z, want[1][1], atol=1e-4, err_msg=form)


@FEW
@given(T=st.sampled_from(LENGTHS), chunk=st.sampled_from(CHUNKS), seed=st.integers(0, 2**16))
def test_delta_forms_agree(d2l, T, chunk, seed):
    """recurrent = chunked (the WY/UT form), outputs and the state, from a state carried in."""
    q, k, v, alpha, beta, S0 = draw(np.random.default_rng(seed), T)
    want_out, want_S = reference.gated_delta_rule(q, k, v, alpha, beta, form="recurrent", state=S0, return_state=True)
    for form in ("recurrent", "chunked"):
        out, S = run_delta(d2l, q, k, v, alpha, beta, S0, form=form, chunk_size=chunk)
        np.testing.assert_allclose(out, want_out, atol=1e-5, err_msg=form)
        np.testing.assert_allclose(S, want_S, atol=1e-5, err_msg=form)


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunked"])
def test_pieces_with_the_state_equal_one_pass(d2l, form):
    """Generation's promise: positions fed in pieces (one at a time at the end), the state passed on,
    give the outputs and the state of one pass; for the delta rule too."""
    q, k, v, alpha, beta, _ = draw(np.random.default_rng(1), 9)
    whole, whole_state = run_linear(d2l, q, k, v, form=form, chunk_size=4)
    delta_form = "recurrent" if form == "recurrent" else "chunked"
    delta_whole, delta_state = run_delta(d2l, q, k, v, alpha, beta, form=delta_form, chunk_size=4)
    outs, state, delta_outs, S = [], None, [], None
    for start, stop in ((0, 5), (5, 8), (8, 9)):
        part = slice(start, stop)
        out, state = run_linear(d2l, q[:, part], k[:, part], v[:, part], state, form=form, chunk_size=4)
        delta_out, S = run_delta(d2l, q[:, part], k[:, part], v[:, part], alpha[:, part], beta[:, part], S,
                                 form=delta_form, chunk_size=4)
        outs, delta_outs = outs + [out], delta_outs + [delta_out]
    np.testing.assert_allclose(np.concatenate(outs, 1), whole, atol=1e-5)
    np.testing.assert_allclose(state[0], whole_state[0], atol=1e-4)
    np.testing.assert_allclose(np.concatenate(delta_outs, 1), delta_whole, atol=1e-5)
    np.testing.assert_allclose(S, delta_state, atol=1e-5)


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_beta_zero_only_decays_the_state(d2l, form):
    """beta = 0 writes nothing: the state is S0 times the product of the alphas, and o_t reads
    S0 decayed to t; with alpha = 1 too, the state is S0 exactly."""
    q, k, v, alpha, _, S0 = draw(np.random.default_rng(2), 5)
    out, S = run_delta(d2l, q, k, v, alpha, np.zeros_like(alpha), S0, form=form, chunk_size=2)
    np.testing.assert_allclose(S, alpha.prod(-1)[..., None, None] * S0, atol=1e-5)
    q_used = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6) / np.sqrt(q.shape[-1])
    want = np.cumprod(alpha, -1)[..., None] * (q_used @ S0)                # (b, T, dv)
    np.testing.assert_allclose(out, want, atol=1e-5)
    _, S = run_delta(d2l, q, k, v, np.ones_like(alpha), np.zeros_like(alpha), S0, form=form, chunk_size=2)
    np.testing.assert_allclose(S, S0, atol=1e-6)


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_full_writes_on_orthonormal_keys_are_exact(d2l, form):
    """alpha = 1, beta = 1, orthonormal keys: from zeros the state is exactly sum_t k_t v_t^T; from any
    state, each key then recalls its own value (S^T k_t = v_t): the delta rule overwrites, it does not add."""
    rng = np.random.default_rng(3)
    keys = np.linalg.qr(rng.normal(size=(4, 4)))[0].T[None] * rng.uniform(0.5, 2)  # (1, 4, 4): any length works
    q, _, v, _, _, S0 = draw(rng, 4, dk=4, dv=3, lead=(1,))
    ones = np.ones((1, 4))
    _, S = run_delta(d2l, q, keys, v, ones, ones, form=form, chunk_size=2)
    unit = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    np.testing.assert_allclose(S[0], unit[0].T @ v[0], atol=1e-5)
    _, S = run_delta(d2l, q, keys, v, ones, ones, S0, form=form, chunk_size=3)
    np.testing.assert_allclose(unit[0] @ S[0], v[0], atol=1e-5)


def test_gated_delta_net_cache_has_a_constant_size(d2l):
    """The layer's cache is (conv inputs, state), the same size after 2 positions as after 9, and feeding
    one position at a time equals one pass."""
    layer = d2l.GatedDeltaNet(8, 2, conv_size=3, chunk_size=4)
    reference_layer = reference.GatedDeltaNet(8, 2, conv_size=3, chunk_size=4)
    reference.set_params(reference_layer, d2l.get_params(layer))
    X = np.random.default_rng(4).normal(size=(2, 9, 8))
    want, _ = reference_layer(X)
    outs, cache, sizes = [], None, set()
    for i in range(9):
        out, cache = layer(d2l.tensor(X[:, i:i + 1]), cache=cache, training=False)
        outs.append(d2l.to_numpy(out))
        sizes.add(tuple(tuple(c.shape) for c in cache))
    assert sizes == {((2, 2, 24), (2, 2, 4, 4))}
    np.testing.assert_allclose(np.concatenate(outs, 1), want, atol=1e-5)


# --- bad input --------------------------------------------------------------------------------


def linear(d2l, q=(2, 5, 3), k=(2, 5, 3), v=(2, 5, 4), **kwargs):
    return d2l.linear_attention(t(d2l, *q), t(d2l, *k), t(d2l, *v), **kwargs)


def delta(d2l, alpha=0.5, gates=(2, 5), state=None, **kwargs):
    a = d2l.tensor(np.full(gates, alpha))
    state = None if state is None else t(d2l, *state)
    return d2l.gated_delta_rule(t(d2l, 2, 5, 3), t(d2l, 2, 5, 3), t(d2l, 2, 5, 4), a, d2l.tensor(np.full(gates, 0.5)),
                                state=state, **kwargs)


BAD_INPUT = {
    "linear feature map": (lambda d2l: linear(d2l, feature_map="softmax"), ValueError,
                           r"feature_map must be one of 'elu1', 'relu', got 'softmax'"),
    "linear form": (lambda d2l: linear(d2l, form="quadratic"), ValueError,
                    r"form must be one of 'chunked', 'recurrent', 'parallel', got 'quadratic'"),
    "linear chunk size": (lambda d2l: linear(d2l, chunk_size=0), ValueError,
                          r"chunk_size must be a positive integer, got 0"),
    "linear causal lengths": (lambda d2l: linear(d2l, k=(2, 6, 3), v=(2, 6, 4)), ValueError,
                              r"causal linear attention needs one key per query \(axis -2\), got queries \(2, 5, 3\) "
                              r"and keys \(2, 6, 3\)"),
    "linear state shape": (lambda d2l: linear(d2l, state=(t(d2l, 2, 3, 5), t(d2l, 2, 3))), ValueError,
                           r"state must be None or a tuple \(S, z\) of shape \(2, 3, 4\), \(2, 3\), got \(2, 3, 5\), "
                           r"\(2, 3\); was it made by inputs of another shape\?"),
    "linear state not a pair": (lambda d2l: linear(d2l, state=t(d2l, 2, 3, 4)), ValueError,
                                r"state must be None or a tuple \(S, z\) of shape \(2, 3, 4\), \(2, 3\), "
                                r"got \(2, 3, 4\)"),
    "delta alpha zero": (lambda d2l: delta(d2l, alpha=0.0), ValueError,
                         r"alpha must lie in \(0, 1\] \(the decay of the state per position\), got values from 0\.0 "
                         r"to 0\.0"),
    "delta alpha above one": (lambda d2l: delta(d2l, alpha=1.5), ValueError,
                              r"alpha must lie in \(0, 1\] \(the decay of the state per position\), got values from "
                              r"1\.5 to 1\.5"),
    "delta gates shape": (lambda d2l: delta(d2l, gates=(2, 4)), ValueError,
                          r"alpha must have shape \(\.\.\., positions\) = \(2, 5\), one number per position, "
                          r"got \(2, 4\)"),
    "delta state shape": (lambda d2l: delta(d2l, state=(2, 4, 3)), ValueError,
                          r"state must be None or an array S of shape \(2, 3, 4\), got \(2, 4, 3\)"),
    "delta form": (lambda d2l: delta(d2l, form="parallel"), ValueError,
                   r"form must be one of 'chunked', 'recurrent', got 'parallel'"),
    "layer cache shape": (lambda d2l: d2l.GatedDeltaNet(8, 2)(t(d2l, 2, 3, 8),
                                                              cache=(t(d2l, 2, 3, 24), t(d2l, 2, 2, 4, 5))), ValueError,
                          r"cache must be None or a tuple \(conv, S\) of shape \(2, 3, 24\), \(2, 2, 4, 4\), "
                          r"got \(2, 3, 24\), \(2, 2, 4, 5\)"),
    "layer heads": (lambda d2l: d2l.GatedDeltaNet(8, 3), ValueError,
                    r"num_hiddens \(8\) must be divisible by num_heads \(3\)"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- GatedDeltaNet as TransformerLM's attention: a hybrid stack ---------------------------------

# Qwen3-Next's pattern, three linear layers then a full one, with linear heads of their own sizes
# (4 heads of 3 key and 2 value features beside the model's 2 heads of 4) and norms' eps 0.1,
# which the linear layers must take from the model
LM_GDN = {"num_heads": 4, "head_size": 3, "value_head_size": 2, "conv_size": 3, "chunk_size": 4}
HYBRID = {"vocab_size": 11, "num_hiddens": 8, "num_heads": 2, "num_layers": 4, "ffn_num_hiddens": 12,
          "attention": ["gated_deltanet"] * 3 + ["mha"], "gated_deltanet": LM_GDN, "norm_eps": 0.1}
STATE = ((2, 2, 4 * 3 + 4 * 3 + 4 * 2), (2, 4, 3, 2))   # (conv (b, conv_size - 1, channels), S (b, heads, dk, dv))


def hybrid_pair(d2l, **changes):
    args = {**HYBRID, **changes}
    ref, ours = reference.TransformerLM(**args), d2l.TransformerLM(**args)
    params = random_params(ref, np.random.default_rng(9), scale=3.0)  # logits far apart: no near ties for argmax
    reference.set_params(ref, params)
    d2l.set_params(ours, params)
    return ours, ref


def shapes(cache):
    return [tuple(tuple(x.shape) for x in layer[:2]) for layer in cache]


def test_a_qwen3_next_style_language_model(d2l):
    """Three GatedDeltaNet blocks per softmax one: the parameters are GatedDeltaNet's own, the
    logits the reference's, a linear block's cache its (conv, S) state beside the softmax block's
    keys and values, pieces give the full pass, and generation gives the reference's tokens with
    and without the cache."""
    model, ref = hybrid_pair(d2l)
    names = d2l.get_params(model)
    assert tuple(names["blocks.0.attention.conv"].shape) == (3, 32) and tuple(names["blocks.2.attention.A_log"].shape) \
        == (4,) and "blocks.3.attention.W_k" in names and "blocks.0.attention.W_z" in names
    tokens = np.random.default_rng(8).integers(0, 11, (2, 7)).astype(np.int32)
    full, cache = model(d2l.tensor(tokens), training=False)
    np.testing.assert_allclose(d2l.to_numpy(full), ref(tokens, training=False)[0], atol=1e-4)
    assert shapes(cache) == [STATE] * 3 + [((2, 2, 7, 4),) * 2]
    first, cache = model(d2l.tensor(tokens[:, :4]), training=False)
    last, cache = model(d2l.tensor(tokens[:, 4:]), cache=cache, training=False)
    np.testing.assert_allclose(np.concatenate([d2l.to_numpy(first), d2l.to_numpy(last)], 1), d2l.to_numpy(full),
                               atol=1e-4)
    prompt = tokens[:, :3]
    want = reference.generate(ref, prompt, 6)
    np.testing.assert_array_equal(d2l.generate(model, prompt, 6), want)
    np.testing.assert_array_equal(d2l.generate(model, prompt, 6, use_cache=False), want)


def test_the_state_does_not_grow_with_the_generated_length(d2l, adapter, monkeypatch):
    """generate hands each GatedDeltaNet call the (conv, S) state of the call before, of one size
    from the prompt to the last token, while the softmax layer's keys grow by one per token; one
    token at a time after the prompt, the logits are those of one pass."""
    model, ref = hybrid_pair(d2l)
    states = []

    def recording(name, state, *args):
        if name == "cache":                                      # GatedDeltaNet's check of its state
            states.append(tuple(tuple(x.shape) for x in state))
        return original(name, state, *args)

    original = _checks.check_state
    monkeypatch.setattr(_checks, "check_state", recording)
    with adapter.eagerly():
        d2l.generate(model, np.array([[1, 2, 3], [4, 5, 6]], np.int32), 4)
    monkeypatch.setattr(_checks, "check_state", original)
    assert len(states) >= 3 * 3 and set(states) == {STATE}, states   # 3 linear layers, 3 calls after the prompt's
    tokens = np.random.default_rng(10).integers(0, 11, (2, 6)).astype(np.int32)
    out, cache = model(d2l.tensor(tokens[:, :3]), training=False)
    logits = [d2l.to_numpy(out)]
    for i in range(3, 6):
        out, cache = model(d2l.tensor(tokens[:, i:i + 1]), cache=cache, training=False)
        logits.append(d2l.to_numpy(out))
        assert shapes(cache) == [STATE] * 3 + [((2, 2, i + 1, 4),) * 2]
    np.testing.assert_allclose(np.concatenate(logits, 1), ref(tokens, training=False)[0], atol=1e-4)


def test_hybrid_weights_travel_through_a_file(d2l, tmp_path):
    """save_params writes the linear layers under their canonical names: a fresh model and the reference
    read the same logits back."""
    model, _ = hybrid_pair(d2l)
    path = tmp_path / "hybrid.safetensors"
    d2l.save_params(model, path)
    fresh, into_reference = d2l.TransformerLM(**HYBRID), reference.TransformerLM(**HYBRID)
    d2l.load_params(fresh, path)
    reference.load_params(into_reference, path)
    tokens = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], np.int32)
    want = d2l.to_numpy(model(d2l.tensor(tokens), training=False)[0])
    np.testing.assert_allclose(d2l.to_numpy(fresh(d2l.tensor(tokens), training=False)[0]), want, atol=1e-5)
    np.testing.assert_allclose(into_reference(tokens)[0], want, atol=1e-4)


@pytest.mark.needs("training")
def test_a_hybrid_stack_trains(d2l):
    """train_lm lowers the loss of the hybrid stack on a sequence it can learn: counting up mod 11."""
    model = d2l.TransformerLM(**{**HYBRID, "norm_eps": 1e-6})
    portable_lm_init(d2l, model, seed=0)
    seq = (np.arange(9)[None] + np.arange(8)[:, None]) % 11                # (8, 9)
    batches = [(seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32), np.full(8, 8, np.int32))]
    losses = d2l.train_lm(model, batches, epochs=30, lr=0.02, progress=False)
    assert np.isfinite(losses).all() and losses[-1] < 0.3 * losses[0], losses


LM_BAD_INPUT = {
    "unknown layer kind": (lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention="linear"), ValueError,
                           r"attention must be one of 'mha', 'mla', 'gated_deltanet' or a sequence of one per layer, "
                           r"got 'linear'"),
    "unknown kind among the layers": (
        lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention=["gated_deltanet", "softmax"], gated_deltanet={}),
        ValueError, r"attention must be one of 'mha', 'mla', 'gated_deltanet' .*, got 'softmax'"),
    "kinds for other layers": (
        lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention=["gated_deltanet"] * 3, gated_deltanet={}),
        ValueError, r"attention must be one value or a sequence of one per layer \(num_layers = 2\), got 3 entries"),
    "gated_deltanet without sizes": (
        lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention=["gated_deltanet", "mha"]), ValueError,
        r"gated_deltanet must be a dict of GatedDeltaNet's sizes \(num_heads, head_size, value_head_size, conv_size, "
        r"norm_eps, chunk_size; \{\} for its defaults\) for the 'gated_deltanet' layers, got NoneType"),
    "gated_deltanet not a dict": (
        lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention="gated_deltanet", gated_deltanet=[4]), ValueError,
        r"gated_deltanet must be a dict of GatedDeltaNet's sizes .*, got list"),
    "gated_deltanet with another layer's size": (
        lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention="gated_deltanet", gated_deltanet={"kv_lora_rank": 4}),
        ValueError, r"gated_deltanet: GatedDeltaNet takes num_heads, head_size, value_head_size, conv_size, norm_eps, "
                    r"chunk_size, not 'kv_lora_rank'"),
    "gated_deltanet sizes that do not fit": (
        lambda d2l: d2l.TransformerLM(11, 8, 2, 2, 12, attention="gated_deltanet", gated_deltanet={"num_heads": 3}),
        ValueError, r"num_hiddens \(8\) must be divisible by num_heads \(3\)"),
}
test_lm_bad_input_is_named = bad_input_test(LM_BAD_INPUT)
