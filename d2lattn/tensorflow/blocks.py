"""The transformer's building blocks: layer norm, position-wise FFN, RMSNorm, SwiGLU FFN, Add & Norm, encoder and
decoder blocks."""

import functools

import keras
import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.attention import MultiHeadAttention, _dense_layer
from d2lattn.tensorflow.ops import _Layer, causal_mask

# The gate of a gated FFN: SiLU (SwiGLU, LLaMA) or GELU in its tanh form (GeGLU, Gemma).
GATES = {"silu": tf.nn.silu, "gelu_tanh": functools.partial(tf.nn.gelu, approximate=True)}


class LayerNorm(_Layer):
    def __init__(self, normalized_size, eps=1e-5):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = self.add_weight(shape=(n,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(n,), initializer="zeros", name="beta")
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.gamma.shape[0], "the normalized_size")
        mean = tf.reduce_mean(X, axis=-1, keepdims=True)                   # (..., 1)
        var = tf.reduce_mean((X - mean) ** 2, axis=-1, keepdims=True)      # biased, as in the paper
        X_hat = (X - mean) / tf.sqrt(var + self.eps)                       # (..., n)
        return X_hat * self.gamma + self.beta


class PositionWiseFFN(_Layer):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs):
        super().__init__()
        n_in, n_h, n_out = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens), ("ffn_num_outputs", ffn_num_outputs)))
        self.W_1 = _dense_layer(n_in, n_h, bias=True)
        self.W_2 = _dense_layer(n_h, n_out, bias=True)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.W_1.kernel.shape[0], "the num_inputs")
        return self.W_2(tf.nn.relu(self.W_1(X)))                          # (b, T, ffn_num_outputs)


class RMSNorm(_Layer):
    def __init__(self, normalized_size, eps=1e-6):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = self.add_weight(shape=(n,), initializer="ones", name="gamma")
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, training=None):
        _checks.check_features("X", X.shape, self.gamma.shape[0], "the normalized_size")
        rms = tf.sqrt(tf.reduce_mean(X ** 2, axis=-1, keepdims=True) + self.eps)  # (..., 1): no mean removed
        return X / rms * self.gamma                                        # (..., n)


class SwiGLUFFN(_Layer):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs=None, *, activation="silu"):
        super().__init__()
        n_in, n_h = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens)))
        n_out = n_in if ffn_num_outputs is None else _checks.checked_positive_int("ffn_num_outputs", ffn_num_outputs)
        self.W_gate = _dense_layer(n_in, n_h)
        self.W_up = _dense_layer(n_in, n_h)
        self.W_down = _dense_layer(n_h, n_out)
        self.gate = GATES[_checks.checked_choice("activation", activation, GATES)]
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, training=None):
        _checks.check_features("X", X.shape, self.W_gate.kernel.shape[0], "the num_inputs")
        return self.W_down(self.gate(self.W_gate(X)) * self.W_up(X))        # (..., ffn_num_outputs)


class AddNorm(_Layer):
    def __init__(self, normalized_size, dropout=0.0):
        super().__init__()
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.norm = LayerNorm(normalized_size)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, Y, *, training=None):
        return self.norm(self.dropout(Y, training=training) + X)          # (b, T, h)


class TransformerEncoderBlock(_Layer):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, valid_lens=None, *, training=None):
        Y = self.addnorm1(X, self.attention(X, X, X, valid_lens, training=training), training=training)
        return self.addnorm2(Y, self.ffn(Y), training=training)           # (b, T, h)


class TransformerDecoderBlock(_Layer):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def _rest(self, X, X2, enc_outputs, enc_valid_lens, training):
        """Everything after the self-attention: Add & Norm, cross-attention, FFN."""
        Y = self.addnorm1(X, X2, training=training)                         # (b, T, h)
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens, training=training)
        Z = self.addnorm2(Y, Y2, training=training)
        return self.addnorm3(Z, self.ffn(Z), training=training)            # (b, T, h)

    def call(self, X, enc_outputs, enc_valid_lens=None, *, training=None):
        T = tf.shape(X)[1]                                                  # known at run time, even if traced
        X2 = self.attention1(X, X, X, mask=causal_mask(T), training=training)   # position t sees 0..t
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training)

    def step(self, X, enc_outputs, enc_valid_lens=None, cache=None, *, training=None):
        key_values = X if cache is None else tf.concat([cache, X], axis=1)  # (b, t + 1, h)
        X2 = self.attention1(X, key_values, key_values, training=training)  # the newest sees all so far
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training), key_values
