"""The Vision Transformer: patch embedding, pre-norm ViT blocks with a GELU MLP, and the ViT."""

import math

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.attention import MultiHeadAttention, _init
from d2lattn.numpy.blocks import LayerNorm
from d2lattn.numpy.params import Module

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(X):
    """The exact GELU, x * Phi(x) with the normal CDF written with erf (not the tanh approximation)."""
    return 0.5 * X * (1.0 + _erf(X / math.sqrt(2.0)))


def patchify(X, patch):
    """(b, H, W, C) -> (b, num_patches, P_h * P_w * C): patches in row-major order over the grid,
    each flattened row by row, then column by column, channels innermost."""
    b, H, W, C = X.shape
    (ph, pw), gh, gw = patch, H // patch[0], W // patch[1]
    X = X.reshape(b, gh, ph, gw, pw, C)                                # (b, grid row, row, grid col, col, C)
    return X.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ph * pw * C)  # (b, N, P_h P_w C)


class PatchEmbedding(Module):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens):
        super().__init__()
        rng = np.random.default_rng(0)
        self.image_size, self.patch_size = _checks.checked_patch_grid(image_size, patch_size)
        self.num_channels = _checks.checked_positive_int("num_channels", num_channels)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        (H, W), (ph, pw) = self.image_size, self.patch_size
        self.num_patches = (H // ph) * (W // pw)
        self.params = {"W_patch": _init(rng, ph * pw * self.num_channels, h), "b_patch": np.zeros(h)}

    def forward(self, X, *, training=None):
        _checks.check_images(np.shape(X), self.image_size, self.num_channels)
        patches = patchify(np.asarray(X), self.patch_size)              # (b, N, P_h P_w C)
        return patches @ self.params["W_patch"] + self.params["b_patch"]  # (b, N, num_hiddens)


class ViTMLP(Module):
    """W_1, GELU, dropout, W_2, dropout: d2l's ViT MLP, with biases."""

    def __init__(self, num_hiddens, mlp_num_hiddens, dropout=0.0):
        super().__init__()
        rng = np.random.default_rng(0)
        h, m = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_hiddens", num_hiddens), ("mlp_num_hiddens", mlp_num_hiddens)))
        self.params = {"W_1": _init(rng, h, m), "b_1": np.zeros(m), "W_2": _init(rng, m, h), "b_2": np.zeros(h)}
        self.rate = _checks.checked_dropout_rate(dropout)

    def forward(self, X, *, training=None):
        p = self.params
        H = self.dropout(gelu(X @ p["W_1"] + p["b_1"]), self.rate, training)  # (b, T, mlp_num_hiddens)
        return self.dropout(H @ p["W_2"] + p["b_2"], self.rate, training)    # (b, T, num_hiddens)


class ViTBlock(Module):
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.norm1 = LayerNorm(num_hiddens)
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.norm2 = LayerNorm(num_hiddens)
        self.mlp = ViTMLP(num_hiddens, mlp_num_hiddens, dropout)

    def forward(self, X, valid_lens=None, *, training=None):
        _checks.check_sequence_input(X.shape, len(self.norm1.params["gamma"]))
        Y = self.norm1(X)                                              # pre-norm: normalize, then attend
        X = X + self.attention(Y, Y, Y, valid_lens, training=training)  # (b, T, h)
        return X + self.mlp(self.norm2(X), training=training)         # (b, T, h)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                        # (b, heads, T, T)


class ViT(Module):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blocks,
                 num_classes, dropout=0.0, bias=False):
        super().__init__()
        rng = np.random.default_rng(1)
        self.patch_embedding = PatchEmbedding(image_size, patch_size, num_channels, num_hiddens)
        h, n = num_hiddens, self.patch_embedding.num_patches + 1       # the class token and the patches
        c = _checks.checked_positive_int("num_classes", num_classes)
        self.params = {"cls_token": np.zeros((1, 1, h)), "pos_embedding": rng.normal(0, 0.02, (1, n, h)),
                       "W_head": _init(rng, h, c), "b_head": np.zeros(c)}
        self.rate = _checks.checked_dropout_rate(dropout)
        self.blocks = [ViTBlock(h, mlp_num_hiddens, num_heads, dropout, bias)
                       for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))]
        self.norm = LayerNorm(h)

    def forward(self, images, *, training=None):
        p = self.params
        X = self.patch_embedding(images)                               # (b, N, h)
        cls = np.broadcast_to(p["cls_token"], (X.shape[0], 1, X.shape[2]))  # (b, 1, h)
        X = self.dropout(np.concatenate([cls, X], axis=1) + p["pos_embedding"], self.rate, training)  # (b, N + 1, h)
        for block in self.blocks:
            X = block(X, training=training)
        return self.norm(X[:, 0]) @ p["W_head"] + p["b_head"]          # the class token: (b, num_classes)

    @property
    def attention_weights(self):
        return [block.attention_weights for block in self.blocks]      # each (b, heads, N + 1, N + 1)
