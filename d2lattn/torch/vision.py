"""The Vision Transformer: patch embedding, pre-norm ViT blocks with a GELU MLP, and the ViT."""

import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks
from d2lattn.torch.attention import MultiHeadAttention
from d2lattn.torch.blocks import LayerNorm


def gelu(X):
    """The exact GELU, x * Phi(x) with the normal CDF written with erf (not the tanh approximation)."""
    return F.gelu(X, approximate="none")


def patchify(X, patch):
    """(b, H, W, C) -> (b, num_patches, P_h * P_w * C): patches in row-major order over the grid,
    each flattened row by row, then column by column, channels innermost."""
    b, H, W, C = X.shape
    (ph, pw), gh, gw = patch, H // patch[0], W // patch[1]
    X = X.reshape(b, gh, ph, gw, pw, C)                                # (b, grid row, row, grid col, col, C)
    return X.permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ph * pw * C)  # (b, N, P_h P_w C)


class PatchEmbedding(nn.Module):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens):
        super().__init__()
        self.image_size, self.patch_size = _checks.checked_patch_grid(image_size, patch_size)
        self.num_channels = _checks.checked_positive_int("num_channels", num_channels)
        (H, W), (ph, pw) = self.image_size, self.patch_size
        self.num_patches = (H // ph) * (W // pw)
        self.W_patch = nn.Linear(ph * pw * self.num_channels, _checks.checked_positive_int("num_hiddens", num_hiddens))

    def forward(self, X, *, training=None):  # no dropout: `training` is ignored
        X = torch.as_tensor(X, device=self.W_patch.weight.device)
        _checks.check_images(X.shape, self.image_size, self.num_channels)
        return self.W_patch(patchify(X, self.patch_size))             # (b, N, num_hiddens)


class ViTMLP(nn.Module):
    """W_1, GELU, dropout, W_2, dropout: d2l's ViT MLP, with biases."""

    def __init__(self, num_hiddens, mlp_num_hiddens, dropout=0.0):
        super().__init__()
        h, m = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_hiddens", num_hiddens), ("mlp_num_hiddens", mlp_num_hiddens)))
        self.W_1 = nn.Linear(h, m)
        self.W_2 = nn.Linear(m, h)
        self.rate = _checks.checked_dropout_rate(dropout)

    def forward(self, X, *, training=None):
        training = self.training if training is None else training
        H = F.dropout(gelu(self.W_1(X)), self.rate, training)          # (b, T, mlp_num_hiddens)
        return F.dropout(self.W_2(H), self.rate, training)             # (b, T, num_hiddens)


class ViTBlock(nn.Module):
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.norm1 = LayerNorm(num_hiddens)
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.norm2 = LayerNorm(num_hiddens)
        self.mlp = ViTMLP(num_hiddens, mlp_num_hiddens, dropout)

    def forward(self, X, valid_lens=None, *, training=None):
        _checks.check_sequence_input(X.shape, len(self.norm1.gamma))
        Y = self.norm1(X)                                              # pre-norm: normalize, then attend
        X = X + self.attention(Y, Y, Y, valid_lens, training=training)  # (b, T, h)
        return X + self.mlp(self.norm2(X), training=training)         # (b, T, h)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                        # (b, heads, T, T)


class ViT(nn.Module):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blocks,
                 num_classes, dropout=0.0, bias=False):
        super().__init__()
        self.patch_embedding = PatchEmbedding(image_size, patch_size, num_channels, num_hiddens)
        h, n = num_hiddens, self.patch_embedding.num_patches + 1       # the class token and the patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, n, h))
        self.rate = _checks.checked_dropout_rate(dropout)
        self.blocks = nn.ModuleList(ViTBlock(h, mlp_num_hiddens, num_heads, dropout, bias)
                                    for _ in range(_checks.checked_positive_int("num_blocks", num_blocks)))
        self.norm = LayerNorm(h)
        self.W_head = nn.Linear(h, _checks.checked_positive_int("num_classes", num_classes))

    def forward(self, images, *, training=None):
        training = self.training if training is None else training
        X = self.patch_embedding(images)                               # (b, N, h)
        cls = self.cls_token.expand(X.shape[0], -1, -1)                # (b, 1, h)
        X = F.dropout(torch.cat([cls, X], dim=1) + self.pos_embedding, self.rate, training)  # (b, N + 1, h)
        for block in self.blocks:
            X = block(X, training=training)
        return self.W_head(self.norm(X[:, 0]))                         # the class token: (b, num_classes)

    @property
    def attention_weights(self):
        return [block.attention_weights for block in self.blocks]      # each (b, heads, N + 1, N + 1)
