"""The transformer's building blocks: layer norm, position-wise FFN, Add & Norm, encoder and decoder blocks.

As in attention.py: `rngs` (keyword-only, default `nnx.Rngs(0)`) seeds the
initial weights and dropout, and `training=None` follows the module's
train/eval state.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from d2lattn import _checks
from d2lattn.jax.attention import MultiHeadAttention, _deterministic
from d2lattn.jax.ops import causal_mask

# The gate of a gated FFN: SiLU (SwiGLU, LLaMA) or GELU in its tanh form (GeGLU, Gemma).
GATES = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


class LayerNorm(nnx.Module):
    def __init__(self, normalized_size, eps=1e-5):
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = nnx.Param(jnp.ones(n))
        self.beta = nnx.Param(jnp.zeros(n))

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.gamma.shape[0], "the normalized_size")
        mean = X.mean(axis=-1, keepdims=True)                             # (..., 1)
        var = ((X - mean) ** 2).mean(axis=-1, keepdims=True)              # biased, as in the paper
        X_hat = (X - mean) / jnp.sqrt(var + self.eps)                     # (..., n)
        return X_hat * self.gamma + self.beta


class PositionWiseFFN(nnx.Module):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        n_in, n_h, n_out = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens), ("ffn_num_outputs", ffn_num_outputs)))
        self.W_1 = nnx.Linear(n_in, n_h, rngs=rngs)
        self.W_2 = nnx.Linear(n_h, n_out, rngs=rngs)

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.W_1.in_features, "the num_inputs")
        return self.W_2(jax.nn.relu(self.W_1(X)))                         # (b, T, ffn_num_outputs)


class RMSNorm(nnx.Module):
    def __init__(self, normalized_size, eps=1e-6):
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = nnx.Param(jnp.ones(n))

    def __call__(self, X, *, training=None):
        _checks.check_features("X", X.shape, self.gamma.shape[0], "the normalized_size")
        rms = jnp.sqrt((X ** 2).mean(axis=-1, keepdims=True) + self.eps)  # (..., 1): no centring
        return X / rms * self.gamma                                       # (..., n)


class SwiGLUFFN(nnx.Module):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs=None, *, activation="silu", rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        n_in = _checks.checked_positive_int("num_inputs", num_inputs)
        n_h = _checks.checked_positive_int("ffn_num_hiddens", ffn_num_hiddens)
        n_out = n_in if ffn_num_outputs is None else _checks.checked_positive_int("ffn_num_outputs", ffn_num_outputs)
        self.W_gate = nnx.Linear(n_in, n_h, use_bias=False, rngs=rngs)
        self.W_up = nnx.Linear(n_in, n_h, use_bias=False, rngs=rngs)
        self.W_down = nnx.Linear(n_h, n_out, use_bias=False, rngs=rngs)
        self.gate = GATES[_checks.checked_choice("activation", activation, GATES)]

    def __call__(self, X, *, training=None):
        _checks.check_features("X", X.shape, self.W_gate.in_features, "the num_inputs")
        return self.W_down(self.gate(self.W_gate(X)) * self.W_up(X))        # (..., ffn_num_outputs)


class AddNorm(nnx.Module):
    def __init__(self, normalized_size, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)
        self.norm = LayerNorm(normalized_size)

    def __call__(self, X, Y, *, training=None):
        return self.norm(self.dropout(Y, deterministic=_deterministic(training)) + X)   # (b, T, h)


class TransformerEncoderBlock(nnx.Module):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias, rngs=rngs)
        self.addnorm1 = AddNorm(num_hiddens, dropout, rngs=rngs)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens, rngs=rngs)
        self.addnorm2 = AddNorm(num_hiddens, dropout, rngs=rngs)

    def __call__(self, X, valid_lens=None, *, training=None):
        Y = self.addnorm1(X, self.attention(X, X, X, valid_lens, training=training), training=training)
        return self.addnorm2(Y, self.ffn(Y), training=training)           # (b, T, h)


class TransformerDecoderBlock(nnx.Module):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias, rngs=rngs)
        self.addnorm1 = AddNorm(num_hiddens, dropout, rngs=rngs)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias, rngs=rngs)
        self.addnorm2 = AddNorm(num_hiddens, dropout, rngs=rngs)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens, rngs=rngs)
        self.addnorm3 = AddNorm(num_hiddens, dropout, rngs=rngs)

    def _rest(self, X, X2, enc_outputs, enc_valid_lens, training):
        """Everything after the self-attention: Add & Norm, cross-attention, FFN."""
        Y = self.addnorm1(X, X2, training=training)                         # (b, T, h)
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens, training=training)
        Z = self.addnorm2(Y, Y2, training=training)
        return self.addnorm3(Z, self.ffn(Z), training=training)            # (b, T, h)

    def __call__(self, X, enc_outputs, enc_valid_lens=None, *, training=None):
        X2 = self.attention1(X, X, X, mask=causal_mask(X.shape[1]), training=training)   # position t sees 0..t
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training)

    def step(self, X, enc_outputs, enc_valid_lens=None, cache=None, *, training=None):
        key_values = X if cache is None else jnp.concatenate([cache, X], axis=1)   # (b, t + 1, h)
        X2 = self.attention1(X, key_values, key_values, training=training)        # the newest sees all so far
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training), key_values
