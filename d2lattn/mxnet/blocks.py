"""The transformer's building blocks: layer norm, position-wise FFN, RMSNorm, SwiGLU FFN, Add & Norm, encoder
and decoder blocks."""

import math

from mxnet import np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.attention import DENSE_INIT, MultiHeadAttention
from d2lattn.mxnet.ops import _F, _graph_keep, _traced, _train_mode, causal_mask

# The gate of a gated FFN: SiLU (SwiGLU, LLaMA) or GELU in its tanh form (GeGLU, Gemma).
GATES = ("silu", "gelu_tanh")


class LayerNorm(nn.HybridBlock):
    def __init__(self, normalized_size, eps=1e-5):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = self.params.get("gamma", shape=(n,), init="ones")
        self.beta = self.params.get("beta", shape=(n,), init="zeros")
        self.initialize()

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        if isinstance(X, np.ndarray):                                     # concrete, not a graph symbol
            _checks.check_features("X", X.shape, self.gamma.shape[0], "the normalized_size")
        return super().__call__(X)

    def hybrid_forward(self, F, X, gamma, beta):
        # MXNet's fused op: the formula's broadcasting ops, (X - mean) / sqrt(var + eps), each have a
        # backward that reduces with a generic kernel in MXNet 1.9, 0.4 of 2.8 s of chapter 7's epoch
        return F.npx.layer_norm(X, gamma, beta, axis=-1, eps=self.eps)  # (X - mean) / sqrt(var + eps) * gamma + beta


class PositionWiseFFN(nn.HybridBlock):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs):
        super().__init__()
        n_in, n_h, n_out = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens), ("ffn_num_outputs", ffn_num_outputs)))
        self.W_1 = nn.Dense(n_h, flatten=False, in_units=n_in)
        self.W_2 = nn.Dense(n_out, flatten=False, in_units=n_h)
        self.initialize(DENSE_INIT)

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        if isinstance(X, np.ndarray):
            _checks.check_features("X", X.shape, self.W_1.weight.shape[1], "the num_inputs")   # Dense: (out, in)
        return super().__call__(X)

    def hybrid_forward(self, F, X):
        return self.W_2(F.npx.relu(self.W_1(X)))                           # (b, T, ffn_num_outputs)


class RMSNorm(nn.HybridBlock):
    def __init__(self, normalized_size, eps=1e-6):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = self.params.get("gamma", shape=(n,), init="ones")
        self.initialize()

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        if isinstance(X, np.ndarray):                                     # concrete, not a graph symbol
            _checks.check_features("X", X.shape, self.gamma.shape[0], "the normalized_size")
        return super().__call__(X)

    def hybrid_forward(self, F, X, gamma):
        rms = F.np.sqrt(F.np.mean(F.np.square(X), axis=-1, keepdims=True) + self.eps)  # (..., 1): no mean removed
        return X / rms * gamma                                            # (..., n)


class SwiGLUFFN(nn.HybridBlock):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs=None, *, activation="silu"):
        super().__init__()
        n_in, n_h = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens)))
        n_out = n_in if ffn_num_outputs is None else _checks.checked_positive_int("ffn_num_outputs", ffn_num_outputs)
        self.W_gate = nn.Dense(n_h, use_bias=False, flatten=False, in_units=n_in)
        self.W_up = nn.Dense(n_h, use_bias=False, flatten=False, in_units=n_in)
        self.W_down = nn.Dense(n_out, use_bias=False, flatten=False, in_units=n_h)
        self.activation = _checks.checked_choice("activation", activation, GATES)
        self.initialize(DENSE_INIT)

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        if isinstance(X, np.ndarray):
            _checks.check_features("X", X.shape, self.W_gate.weight.shape[1], "the num_inputs")  # Dense: (out, in)
        return super().__call__(X)

    def hybrid_forward(self, F, X):
        G = self.W_gate(X)                                                # (..., ffn_num_hiddens)
        if self.activation == "silu":
            A = G * F.npx.sigmoid(G)
        else:                                                             # GELU's tanh form: GeGLU (Gemma)
            A = 0.5 * G * (1 + F.np.tanh(math.sqrt(2 / math.pi) * (G + 0.044715 * G ** 3)))
        return self.W_down(A * self.W_up(X))                              # (..., ffn_num_outputs)


class AddNorm(nn.HybridBlock):
    def __init__(self, normalized_size, dropout=0.0):
        super().__init__()
        self.rate = _checks.checked_dropout_rate(dropout)
        self.norm = LayerNorm(normalized_size)

    def __call__(self, X, Y, *, training=None):
        with _train_mode(training):
            return super().__call__(X, Y)

    def hybrid_forward(self, F, X, Y):
        Y = F.npx.dropout(Y, p=self.rate) if self.rate else Y             # active only in training
        return self.norm(Y + X)                                            # (b, T, h)


class _Block(nn.HybridBlock):
    """What both transformer blocks share, as `_Attention` does for attention.

    The call checks the inputs and makes each attention's `keep` array before the
    graph (`self.keep`), then `graph` runs `hybrid_forward` in the requested mode.
    The graph also returns the attention children's weights (traced, a child only
    sees graph symbols) and `graph` hands them back, so `.attention_weights` hold
    arrays after a hybridized call too. Traced inside a parent's graph, the call makes
    `keep` from positions (`graph_keep`), which serves calls without lengths.
    """

    attentions = ()                                                        # the MultiHeadAttention children

    def graph(self, training, *arrays):
        with _train_mode(training):
            out, *saved = super().__call__(*arrays)
        for i, name in enumerate(self.attentions):
            getattr(self, name).save_weights(*saved[2 * i: 2 * i + 2])  # (weights, live) of each
        return out

    def with_weights(self, out):
        """In hybrid_forward: the output, then the attention children's saved weights."""
        return (out, *(x for name in self.attentions for x in getattr(self, name).attention._saved))


class TransformerEncoderBlock(_Block):
    attentions = ("attention",)

    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(num_hiddens, dropout)

    def __call__(self, X, valid_lens=None, *, training=None):
        if _traced(self, X, valid_lens=valid_lens):
            keep = _graph_keep(X)                                           # every key
        else:
            keep = self.attention.keep(X, X, X, valid_lens, None)          # broadcasts to (b, heads, T, T)
        return self.graph(training, X, keep)

    def hybrid_forward(self, F, X, keep):
        Y = self.addnorm1(X, self.attention.with_keep(X, X, X, keep))
        return self.with_weights(self.addnorm2(Y, self.ffn(Y)))            # (b, T, h), then the weights


class TransformerDecoderBlock(_Block):
    """One graph for both calls: X attends over `key_values` (X itself, causally, in the
    full pass; the cached inputs and X in a step), then over the encoder's outputs."""

    attentions = ("attention1", "attention2")

    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm2 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm3 = AddNorm(num_hiddens, dropout)

    def _decode(self, X, key_values, enc_outputs, enc_valid_lens, mask, training):
        keep1 = self.attention1.keep(X, key_values, key_values, None, mask)        # broadcasts to (b, heads, T, t)
        keep2 = self.attention2.keep(X, enc_outputs, enc_outputs, enc_valid_lens, None)  # ... (b, heads, T, S)
        return self.graph(training, X, key_values, enc_outputs, keep1, keep2)

    def __call__(self, X, enc_outputs, enc_valid_lens=None, *, training=None):
        if _traced(self, X, enc_valid_lens=enc_valid_lens):
            return self.graph(training, X, X, enc_outputs, _graph_keep(X, causal=True), _graph_keep(X))
        mask = causal_mask(X.shape[1]).as_in_ctx(X.ctx)                            # position t sees 0..t
        return self._decode(X, X, enc_outputs, enc_valid_lens, mask, training)

    def step(self, X, enc_outputs, enc_valid_lens=None, cache=None, *, training=None):
        key_values = X if cache is None else _F(X).np.concatenate([cache, X], axis=1)  # (b, t + 1, h)
        if _traced(self, X, enc_valid_lens=enc_valid_lens):                         # the newest sees all so far
            return self.graph(training, X, key_values, enc_outputs, _graph_keep(X), _graph_keep(X)), key_values
        return self._decode(X, key_values, enc_outputs, enc_valid_lens, None, training), key_values

    def hybrid_forward(self, F, X, key_values, enc_outputs, keep1, keep2):
        Y = self.addnorm1(X, self.attention1.with_keep(X, key_values, key_values, keep1))   # (b, T, h)
        Z = self.addnorm2(Y, self.attention2.with_keep(Y, enc_outputs, enc_outputs, keep2))
        return self.with_weights(self.addnorm3(Z, self.ffn(Z)))                    # (b, T, h), then the weights
