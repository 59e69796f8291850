"""The transformer's building blocks: layer norm, position-wise FFN, RMSNorm, SwiGLU FFN, Add & Norm, encoder and
decoder blocks."""

import functools

import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks
from d2lattn.torch.attention import MultiHeadAttention
from d2lattn.torch.ops import causal_mask

# The gate of a gated FFN: SiLU (SwiGLU, LLaMA) or GELU in its tanh form (GeGLU, Gemma).
GATES = {"silu": F.silu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}


class LayerNorm(nn.Module):
    def __init__(self, normalized_size, eps=1e-5):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = nn.Parameter(torch.ones(n))
        self.beta = nn.Parameter(torch.zeros(n))

    def forward(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, len(self.gamma), "the normalized_size")
        mean = X.mean(dim=-1, keepdim=True)                               # (..., 1)
        var = ((X - mean) ** 2).mean(dim=-1, keepdim=True)                # biased, as in the paper
        X_hat = (X - mean) / torch.sqrt(var + self.eps)                   # (..., n)
        return X_hat * self.gamma + self.beta


class PositionWiseFFN(nn.Module):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs):
        super().__init__()
        n_in, n_h, n_out = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens), ("ffn_num_outputs", ffn_num_outputs)))
        self.W_1 = nn.Linear(n_in, n_h)
        self.W_2 = nn.Linear(n_h, n_out)

    def forward(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.W_1.in_features, "the num_inputs")
        return self.W_2(F.relu(self.W_1(X)))                               # (b, T, ffn_num_outputs)


class RMSNorm(nn.Module):
    def __init__(self, normalized_size, eps=1e-6):
        super().__init__()
        n = _checks.checked_positive_int("normalized_size", normalized_size)
        self.eps = _checks.checked_positive_number("eps", eps)
        self.gamma = nn.Parameter(torch.ones(n))

    def forward(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, len(self.gamma), "the normalized_size")
        rms = torch.sqrt((X ** 2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1), no centring
        return X / rms * self.gamma                                       # (..., n)


class SwiGLUFFN(nn.Module):
    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs=None, *, activation="silu"):
        super().__init__()
        n_in, n_h = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_inputs", num_inputs), ("ffn_num_hiddens", ffn_num_hiddens)))
        n_out = n_in if ffn_num_outputs is None else _checks.checked_positive_int("ffn_num_outputs", ffn_num_outputs)
        self.W_gate = nn.Linear(n_in, n_h, bias=False)
        self.W_up = nn.Linear(n_in, n_h, bias=False)
        self.W_down = nn.Linear(n_h, n_out, bias=False)
        self.gate = GATES[_checks.checked_choice("activation", activation, GATES)]

    def forward(self, X, *, training=None):  # no dropout: `training` is ignored
        _checks.check_features("X", X.shape, self.W_gate.in_features, "the num_inputs")
        return self.W_down(self.gate(self.W_gate(X)) * self.W_up(X))        # (..., ffn_num_outputs)


class AddNorm(nn.Module):
    def __init__(self, normalized_size, dropout=0.0):
        super().__init__()
        self.rate = _checks.checked_dropout_rate(dropout)
        self.norm = LayerNorm(normalized_size)

    def forward(self, X, Y, *, training=None):
        training = self.training if training is None else training
        return self.norm(F.dropout(Y, self.rate, training) + X)           # (b, T, h)


class TransformerEncoderBlock(nn.Module):
    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.addnorm1 = AddNorm(num_hiddens, dropout)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, num_hiddens)
        self.addnorm2 = AddNorm(num_hiddens, dropout)

    def forward(self, X, valid_lens=None, *, training=None):
        Y = self.addnorm1(X, self.attention(X, X, X, valid_lens, training=training), training=training)
        return self.addnorm2(Y, self.ffn(Y), training=training)           # (b, T, h)


class TransformerDecoderBlock(nn.Module):
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
        Y = self.addnorm1(X, X2, training=training)                         # (b, T, h)
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens, training=training)
        Z = self.addnorm2(Y, Y2, training=training)
        return self.addnorm3(Z, self.ffn(Z), training=training)            # (b, T, h)

    def forward(self, X, enc_outputs, enc_valid_lens=None, *, training=None):
        mask = causal_mask(X.shape[1]).to(X.device)                         # position t sees 0..t
        X2 = self.attention1(X, X, X, mask=mask, training=training)
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training)

    def step(self, X, enc_outputs, enc_valid_lens=None, cache=None, *, training=None):
        key_values = X if cache is None else torch.cat([cache, X], dim=1)   # (b, t + 1, h)
        X2 = self.attention1(X, key_values, key_values, training=training)  # the newest sees all so far
        return self._rest(X, X2, enc_outputs, enc_valid_lens, training), key_values
