"""The Vision Transformer: patch embedding, pre-norm ViT blocks with a GELU MLP, and the ViT.

As in attention.py: `rngs` (keyword-only, default `nnx.Rngs(0)`) seeds the initial weights
and dropout, and `training=None` follows the module's train/eval state.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from d2lattn import _checks
from d2lattn.jax.attention import MultiHeadAttention, _deterministic
from d2lattn.jax.blocks import LayerNorm


def gelu(X):
    """The exact GELU, x * Phi(x) with the normal CDF written with erf (JAX's default is the tanh
    approximation)."""
    return jax.nn.gelu(X, approximate=False)


def patchify(X, patch):
    """(b, H, W, C) -> (b, num_patches, P_h * P_w * C): patches in row-major order over the grid,
    each flattened row by row, then column by column, channels innermost."""
    b, H, W, C = X.shape
    (ph, pw), gh, gw = patch, H // patch[0], W // patch[1]
    X = X.reshape(b, gh, ph, gw, pw, C)                                # (b, grid row, row, grid col, col, C)
    return X.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, ph * pw * C)  # (b, N, P_h P_w C)


class PatchEmbedding(nnx.Module):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.image_size, self.patch_size = _checks.checked_patch_grid(image_size, patch_size)
        self.num_channels = _checks.checked_positive_int("num_channels", num_channels)
        (H, W), (ph, pw) = self.image_size, self.patch_size
        self.num_patches = (H // ph) * (W // pw)
        self.W_patch = nnx.Linear(ph * pw * self.num_channels, _checks.checked_positive_int("num_hiddens", num_hiddens),
                                  rngs=rngs)

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        X = jnp.asarray(X)
        _checks.check_images(X.shape, self.image_size, self.num_channels)
        return self.W_patch(patchify(X, self.patch_size))             # (b, N, num_hiddens)


class ViTMLP(nnx.Module):
    """W_1, GELU, dropout, W_2, dropout: d2l's ViT MLP, with biases."""

    def __init__(self, num_hiddens, mlp_num_hiddens, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        h, m = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_hiddens", num_hiddens), ("mlp_num_hiddens", mlp_num_hiddens)))
        self.W_1 = nnx.Linear(h, m, rngs=rngs)
        self.W_2 = nnx.Linear(m, h, rngs=rngs)
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)

    def __call__(self, X, *, training=None):
        drop = functools.partial(self.dropout, deterministic=_deterministic(training))
        H = drop(gelu(self.W_1(X)))                                    # (b, T, mlp_num_hiddens)
        return drop(self.W_2(H))                                       # (b, T, num_hiddens)


class ViTBlock(nnx.Module):
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout=0.0, bias=False, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.norm1 = LayerNorm(num_hiddens)
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias, rngs=rngs)
        self.norm2 = LayerNorm(num_hiddens)
        self.mlp = ViTMLP(num_hiddens, mlp_num_hiddens, dropout, rngs=rngs)

    def __call__(self, X, valid_lens=None, *, training=None):
        _checks.check_sequence_input(X.shape, self.norm1.gamma.shape[0])
        Y = self.norm1(X)                                              # pre-norm: normalize, then attend
        X = X + self.attention(Y, Y, Y, valid_lens, training=training)  # (b, T, h)
        return X + self.mlp(self.norm2(X), training=training)         # (b, T, h)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                        # (b, heads, T, T)


class ViT(nnx.Module):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blocks,
                 num_classes, dropout=0.0, bias=False, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.patch_embedding = PatchEmbedding(image_size, patch_size, num_channels, num_hiddens, rngs=rngs)
        h, n = num_hiddens, self.patch_embedding.num_patches + 1       # the class token and the patches
        self.cls_token = nnx.Param(jnp.zeros((1, 1, h)))
        self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, n, h)))
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)
        self.blocks = nnx.List([ViTBlock(h, mlp_num_hiddens, num_heads, dropout, bias, rngs=rngs)
                                for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))])
        self.norm = LayerNorm(h)
        self.W_head = nnx.Linear(h, _checks.checked_positive_int("num_classes", num_classes), rngs=rngs)

    def __call__(self, images, *, training=None):
        X = self.patch_embedding(images)                               # (b, N, h)
        cls = jnp.broadcast_to(self.cls_token[...], (X.shape[0], 1, X.shape[2]))  # (b, 1, h)
        X = jnp.concatenate([cls, X], axis=1) + self.pos_embedding[...]  # (b, N + 1, h)
        X = self.dropout(X, deterministic=_deterministic(training))
        for block in self.blocks:
            X = block(X, training=training)
        return self.W_head(self.norm(X[:, 0]))                         # the class token: (b, num_classes)

    @property
    def attention_weights(self):
        return [block.attention_weights for block in self.blocks]      # each (b, heads, N + 1, N + 1)
