"""The Vision Transformer: patch embedding, pre-norm ViT blocks with a GELU MLP, and the ViT."""

import keras
import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.attention import MultiHeadAttention, _dense_layer
from d2lattn.tensorflow.blocks import LayerNorm
from d2lattn.tensorflow.ops import _Layer


def gelu(X):
    """The exact GELU, x * Phi(x) with the normal CDF written with erf (not the tanh approximation)."""
    return tf.nn.gelu(X, approximate=False)


def patchify(X, patch):
    """(b, H, W, C) -> (b, num_patches, P_h * P_w * C): patches in row-major order over the grid,
    each flattened row by row, then column by column, channels innermost."""
    b, (_, H, W, C) = tf.shape(X)[0], X.shape                          # the batch may be unknown while traced
    (ph, pw), gh, gw = patch, H // patch[0], W // patch[1]
    X = tf.reshape(X, (b, gh, ph, gw, pw, C))                          # (b, grid row, row, grid col, col, C)
    return tf.reshape(tf.transpose(X, (0, 1, 3, 2, 4, 5)), (b, gh * gw, ph * pw * C))  # (b, N, P_h P_w C)


class PatchEmbedding(_Layer):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens):
        super().__init__()
        self.image_size, self.patch_size = _checks.checked_patch_grid(image_size, patch_size)
        self.num_channels = _checks.checked_positive_int("num_channels", num_channels)
        (H, W), (ph, pw) = self.image_size, self.patch_size
        self.num_patches = (H // ph) * (W // pw)
        self.W_patch = _dense_layer(ph * pw * self.num_channels,
                                    _checks.checked_positive_int("num_hiddens", num_hiddens), bias=True)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, training=None):  # no dropout: `training` is ignored
        X = tf.convert_to_tensor(X)
        _checks.check_images(X.shape, self.image_size, self.num_channels)
        return self.W_patch(patchify(X, self.patch_size))             # (b, N, num_hiddens)


class ViTMLP(_Layer):
    """W_1, GELU, dropout, W_2, dropout: d2l's ViT MLP, with biases."""

    def __init__(self, num_hiddens, mlp_num_hiddens, dropout=0.0):
        super().__init__()
        h, m = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_hiddens", num_hiddens), ("mlp_num_hiddens", mlp_num_hiddens)))
        self.W_1 = _dense_layer(h, m, bias=True)
        self.W_2 = _dense_layer(m, h, bias=True)
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, training=None):
        H = self.dropout(gelu(self.W_1(X)), training=training)         # (b, T, mlp_num_hiddens)
        return self.dropout(self.W_2(H), training=training)            # (b, T, num_hiddens)


class ViTBlock(_Layer):
    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.norm1 = LayerNorm(num_hiddens)
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.norm2 = LayerNorm(num_hiddens)
        self.mlp = ViTMLP(num_hiddens, mlp_num_hiddens, dropout)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, valid_lens=None, *, training=None):
        _checks.check_sequence_input(X.shape, self.norm1.gamma.shape[0])
        Y = self.norm1(X)                                              # pre-norm: normalize, then attend
        X = X + self.attention(Y, Y, Y, valid_lens, training=training)  # (b, T, h)
        return X + self.mlp(self.norm2(X), training=training)         # (b, T, h)

    @property
    def attention_weights(self):
        return self.attention.attention_weights                        # (b, heads, T, T)


class ViT(_Layer):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blocks,
                 num_classes, dropout=0.0, bias=False):
        super().__init__()
        self.patch_embedding = PatchEmbedding(image_size, patch_size, num_channels, num_hiddens)
        h, n = num_hiddens, self.patch_embedding.num_patches + 1       # the class token and the patches
        self.cls_token = self.add_weight(shape=(1, 1, h), initializer="zeros", name="cls_token")
        self.pos_embedding = self.add_weight(shape=(1, n, h), initializer=keras.initializers.RandomNormal(0, 0.02),
                                             name="pos_embedding")
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.blocks = [ViTBlock(h, mlp_num_hiddens, num_heads, dropout, bias)
                       for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))]
        self.norm = LayerNorm(h)
        self.W_head = _dense_layer(h, _checks.checked_positive_int("num_classes", num_classes), bias=True)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, images, *, training=None):
        X = self.patch_embedding(images)                               # (b, N, h)
        cls = tf.tile(self.cls_token, (tf.shape(X)[0], 1, 1))          # (b, 1, h)
        X = self.dropout(tf.concat([cls, X], axis=1) + self.pos_embedding, training=training)  # (b, N + 1, h)
        for block in self.blocks:
            X = block(X, training=training)
        return self.W_head(self.norm(X[:, 0]))                         # the class token: (b, num_classes)

    @property
    def attention_weights(self):
        return [block.attention_weights for block in self.blocks]      # each (b, heads, N + 1, N + 1)
