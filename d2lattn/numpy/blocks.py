"""The transformer's building blocks: layer norm, position-wise FFN, RMSNorm, SwiGLU FFN, Add & Norm, encoder
and decoder blocks."""

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.attention import MultiHeadAttention, _init
from d2lattn.numpy.ops import causal_mask
from d2lattn.numpy.params import Module

# The gate of a gated FFN: SiLU (SwiGLU, LLaMA) or GELU in its tanh form (GeGLU, Gemma).
GATES = ("silu", "gelu_tanh")


class LayerNorm(Module):
    def __init__(self, normalized_size, eps=1e-5):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.params = {"gamma": np.ones(n), "beta": np.zeros(n)}

    def forward(self, X, *, training=None):
        _checks.check_features("X", X.shape, len(self.params["gamma"]), "the normalized_size")
        mean = X.mean(axis=-1, keepdims=True)                          # (..., 1)
        var = ((X - mean) ** 2).mean(axis=-1, keepdims=True)           # biased, as in the paper
        X_hat = (X - mean) / np.sqrt(var + self.eps)                   # (..., n)
        return X_hat * self.params["gamma"] + self.params["beta"]


class PositionWiseFFN(Module):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs):
        super().__init__()
        rng = np.random.default_rng(0)
        n_in, n_h, n_out = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens), ("ffn_num_outputs", ffn_num_outputs)))
        self.params = {"W_1": _init(rng, n_in, n_h), "b_1": np.zeros(n_h),
                       "W_2": _init(rng, n_h, n_out), "b_2": np.zeros(n_out)}

    def forward(self, X, *, training=None):
        p = self.params
        _checks.check_features("X", X.shape, p["W_1"].shape[0], "the num_inputs")
        H = np.maximum(X @ p["W_1"] + p["b_1"], 0.0)                  # (b, T, ffn_num_hiddens)
        return H @ p["W_2"] + p["b_2"]                                # (b, T, ffn_num_outputs)


class RMSNorm(Module):
    def __init__(self, normalized_size, eps=1e-6):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.params = {"gamma": np.ones(n)}

    def forward(self, X, *, training=None):
        _checks.check_features("X", X.shape, len(self.params["gamma"]), "the normalized_size")
        rms = np.sqrt((X ** 2).mean(axis=-1, keepdims=True) + self.eps)  # (..., 1): no mean removed
        return X / rms * self.params["gamma"]                          # (..., n)


class SwiGLUFFN(Module):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs=None, *, activation="silu"):
        super().__init__()
        rng = np.random.default_rng(0)
        n_in, n_h = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens)))
        n_out = n_in if ffn_num_outputs is None else _checks.checked_positive_int("ffn_num_outputs", ffn_num_outputs)
        self.params = {"W_gate": _init(rng, n_in, n_h), "W_up": _init(rng, n_in, n_h), "W_down": _init(rng, n_h, n_out)}
        self.activation = _checks.checked_choice("activation", activation, GATES)

    def forward(self, X, *, training=None):
        p = self.params
        _checks.check_features("X", X.shape, p["W_gate"].shape[0], "the num_inputs")
        G = X @ p["W_gate"]                                            # (..., ffn_num_hiddens)
        if self.activation == "silu":
            A = G * 0.5 * (1 + np.tanh(0.5 * G))                       # G * sigmoid(G), without overflow
        else:                                                          # GELU's tanh form: GeGLU (Gemma)
            A = 0.5 * G * (1 + np.tanh(np.sqrt(2 / np.pi) * (G + 0.044715 * G**3)))
        return (A * (X @ p["W_up"])) @ p["W_down"]                     # (..., ffn_num_outputs)


class AddNorm(Module):
    def __init__(self, normalized_size, dropout=0.0):
        super().__init__()
        self.rate = _checks.checked_dropout_rate(dropout)
        self.norm = LayerNorm(normalized_size)

    def forward(self, X, Y, *, training=None):
        return self.norm(self.dropout(Y, self.rate, training) + X)    # (b, T, h)


class TransformerEncoderBlock(Module):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(num_hiddens, dropout)

    def forward(self, X, valid_lens=None, *, training=None):
        Y = self.addnorm1(X, self.attention(X, X, X, valid_lens, training=training), training=training)
        return self.addnorm2(Y, self.ffn(Y), training=training)       # (b, T, h)


class TransformerDecoderBlock(Module):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout)

    def _rest(self, X, X2, enc_outputs, enc_valid_lens, training):
        """Everything after the self-attention: Add & Norm, cross-attention, FFN."""
        Y = self.addnorm1(X, X2, training=training)                     # (b, T, h)
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens, training=training)
        Z = self.addnorm2(Y, Y2, training=training)
        return self.addnorm3(Z, self.ffn(Z), training=training)        # (b, T, h)

    def forward(self, X, enc_outputs, enc_valid_lens=None, *, training=None):
        T = X.shape[1]
        X2 = self.attention1(X, X, X, mask=causal_mask(T), training=training)   # position t sees 0..t
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training)

    def step(self, X, enc_outputs, enc_valid_lens=None, cache=None, *, training=None):
        key_values = X if cache is None else np.concatenate([cache, X], axis=1)   # (b, t + 1, h)
        X2 = self.attention1(X, key_values, key_values, training=training)      # the newest sees all so far
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training), key_values
