"""Independent oracles: closed forms and gradients written out by hand, on every backend.

The harness holds each framework to the NumPy reference; these hold the reference (in the
numpy session) and every framework (in theirs) to formulas stated here, so a bug made in the
reference and a framework alike (sin and cos swapped, LayerNorm without eps) still fails. The
last tests check the reference's finite differences themselves: the parameter path and
tuple outputs, against gradients derived by hand.
"""

import math

import numpy as np
import pytest

from d2lattn import numpy as ref


def test_positional_encoding_closed_form(d2l):
    """P[0, t, 2i] = sin(t / 10000^(2i/d)), P[0, t, 2i+1] = cos(t / 10000^(2i/d)); odd d too."""
    for d in (8, 7):
        P = d2l.to_numpy(d2l.PositionalEncoding(d, max_len=50).P)
        assert P.shape == (1, 50, d)
        for t in (0, 1, 5, 49):
            for j in range(d):
                i = j // 2
                angle = t / 10000 ** (2 * i / d)
                want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
                assert abs(P[0, t, j] - want) < 1e-6, (d, t, j)


def test_positional_encoding_by_hand(d2l):
    P = d2l.to_numpy(d2l.PositionalEncoding(4, max_len=3).P)[0]
    np.testing.assert_allclose(P[0], [0, 1, 0, 1], atol=1e-7)                         # position 0
    np.testing.assert_allclose(P[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], atol=1e-6)
    X = d2l.zeros((1, 3, 4))                                                         # the call adds P
    np.testing.assert_allclose(d2l.to_numpy(d2l.PositionalEncoding(4, max_len=3)(X, training=False))[0], P,
                               atol=1e-7)


def _set(d2l, module, **params):
    d2l.set_params(module, params)
    return module


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_layer_norm_eps_on_low_variance_inputs(d2l, eps):
    """At scale 0.01 the variance (1e-4) is close to eps: forgetting eps moves outputs by ~5%."""
    rng = np.random.default_rng(0)
    X = 0.01 * rng.normal(size=(2, 3, 6))
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    norm = _set(d2l, d2l.LayerNorm(6, eps=eps), gamma=gamma, beta=beta)
    mean = X.mean(-1, keepdims=True)
    var = ((X - mean) ** 2).mean(-1, keepdims=True)                      # biased
    want = (X - mean) / np.sqrt(var + eps) * gamma + beta
    np.testing.assert_allclose(d2l.to_numpy(norm(d2l.tensor(X), training=False)), want, atol=2e-5)


def test_rms_norm_eps_on_low_variance_inputs(d2l):
    rng = np.random.default_rng(1)
    X = 0.001 * rng.normal(size=(2, 3, 6))                               # mean square 1e-6 = eps
    gamma = rng.normal(size=6)
    norm = _set(d2l, d2l.RMSNorm(6), gamma=gamma)
    want = X / np.sqrt((X ** 2).mean(-1, keepdims=True) + 1e-6) * gamma
    np.testing.assert_allclose(d2l.to_numpy(norm(d2l.tensor(X), training=False)), want, atol=2e-5)


# --- the reference's finite differences, checked against gradients written out by hand -----------


def test_finite_differences_parameter_path_layer_norm():
    """For sum(LayerNorm(X) * P): d/d beta = sum of P over positions, d/d gamma = sum of P * X_hat."""
    rng = np.random.default_rng(2)
    X, P = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    norm = ref.LayerNorm(4)
    ref.set_params(norm, {"gamma": rng.normal(size=4), "beta": rng.normal(size=4)})
    _, _, grads = ref.value_and_grads(norm, [X], P)
    X_hat = (X - X.mean(-1, keepdims=True)) / np.sqrt(X.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(grads["beta"], P.sum((0, 1)), atol=1e-7)
    np.testing.assert_allclose(grads["gamma"], (P * X_hat).sum((0, 1)), atol=1e-7)


def test_finite_differences_parameter_path_attention_values():
    """One head, W_o = I: out = A (X_v W_v), so d/d W_v of sum(out * P) = sum_b X_v^T (A^T P)."""
    rng = np.random.default_rng(3)
    Xq, Xk, Xv, P = (rng.normal(size=s) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 4), (2, 3, 4)))
    mha = ref.MultiHeadAttention(4, 1)
    ref.set_params(mha, {"W_q": rng.normal(size=(4, 4)), "W_k": rng.normal(size=(4, 4)),
                         "W_v": rng.normal(size=(4, 4)), "W_o": np.eye(4)})
    _, (_, _, dXv), grads = ref.value_and_grads(mha, [Xq, Xk, Xv], P, training=False)
    A = mha.attention_weights[:, 0]                                      # (b, q, k)
    W_v = ref.get_params(mha)["W_v"]
    np.testing.assert_allclose(grads["W_v"], sum(Xv[b].T @ (A[b].T @ P[b]) for b in range(2)), atol=1e-6)
    np.testing.assert_allclose(dXv, (np.swapaxes(A, 1, 2) @ P) @ W_v.T, atol=1e-6)  # and the input path
    np.testing.assert_allclose(grads["W_o"], sum((A[b] @ Xv[b] @ W_v).T @ P[b] for b in range(2)), atol=1e-6)


def test_finite_differences_two_outputs():
    """A tuple output takes one projection each: d/dX of sum(softmax(X) P1) + sum(tanh(X) P2)."""
    rng = np.random.default_rng(4)
    X, P1, P2 = (rng.normal(size=(1, 2, 3)) for _ in range(3))
    out, (grad,), params = ref.value_and_grads(lambda x: (ref.masked_softmax(x), ref.tanh(x)), [X], (P1, P2))
    s = np.exp(X) / np.exp(X).sum(-1, keepdims=True)
    want = s * (P1 - (s * P1).sum(-1, keepdims=True)) + (1 - np.tanh(X) ** 2) * P2
    np.testing.assert_allclose(grad, want, atol=1e-8)
    assert isinstance(out, tuple) and len(out) == 2 and params == {}
