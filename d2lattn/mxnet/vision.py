"""The Vision Transformer: patch embedding, pre-norm ViT blocks with a GELU MLP, and the ViT.

As in blocks.py, the call checks the inputs and makes the attention's `keep` array before
the (possibly hybridized) graph, which hands back each block's attention weights.
"""

from mxnet import init, np
from mxnet.gluon import nn

from d2lattn import _checks
from d2lattn.mxnet.attention import DENSE_INIT, MultiHeadAttention
from d2lattn.mxnet.blocks import LayerNorm, _Block
from d2lattn.mxnet.ops import _graph_keep, _traced, _train_mode, tensor


def gelu(F, X):
    """The exact GELU, x * Phi(x) with the normal CDF written with erf (MXNet's "gelu" is that one,
    not the tanh approximation)."""
    return F.npx.leaky_relu(X, act_type="gelu")


def patchify(F, X, patch, grid):
    """(b, H, W, C) -> (b, num_patches, P_h * P_w * C): patches in row-major order over the grid,
    each flattened row by row, then column by column, channels innermost. Sizes come from the
    module (`patch`, `grid` (rows, columns)): a graph symbol has no shape, -2 keeps the batch."""
    (ph, pw), (gh, gw) = patch, grid
    X = F.npx.reshape(X, (-2, gh, ph, gw, pw, -1))                     # (b, grid row, row, grid col, col, C)
    return F.npx.reshape(F.np.transpose(X, (0, 1, 3, 2, 4, 5)), (-2, gh * gw, -1))  # (b, N, P_h P_w C)


class PatchEmbedding(nn.HybridBlock):
    def __init__(self, image_size, patch_size, num_channels, num_hiddens):
        super().__init__()
        self.image_size, self.patch_size = _checks.checked_patch_grid(image_size, patch_size)
        self.num_channels = _checks.checked_positive_int("num_channels", num_channels)
        (H, W), (ph, pw) = self.image_size, self.patch_size
        self.grid = (H // ph, W // pw)
        self.num_patches = self.grid[0] * self.grid[1]
        self.W_patch = nn.Dense(_checks.checked_positive_int("num_hiddens", num_hiddens), flatten=False,
                                in_units=ph * pw * self.num_channels)
        self.initialize(DENSE_INIT)

    def __call__(self, X, *, training=None):  # no dropout: `training` is ignored
        if not _traced(self, X):                                          # concrete, not a graph symbol
            X = tensor(X)
            _checks.check_images(X.shape, self.image_size, self.num_channels)
        return super().__call__(X)

    def hybrid_forward(self, F, X):
        return self.W_patch(patchify(F, X, self.patch_size, self.grid))   # (b, N, num_hiddens)


class ViTMLP(nn.HybridBlock):
    """W_1, GELU, dropout, W_2, dropout: d2l's ViT MLP, with biases."""

    def __init__(self, num_hiddens, mlp_num_hiddens, dropout=0.0):
        super().__init__()
        h, m = (_checks.checked_positive_int(name, n) for name, n in (
            ("num_hiddens", num_hiddens), ("mlp_num_hiddens", mlp_num_hiddens)))
        self.W_1 = nn.Dense(m, flatten=False, in_units=h)
        self.W_2 = nn.Dense(h, flatten=False, in_units=m)
        self.rate = _checks.checked_dropout_rate(dropout)
        self.initialize(DENSE_INIT)

    def dropout(self, F, X):
        return F.npx.dropout(X, p=self.rate) if self.rate else X          # active only in training

    def hybrid_forward(self, F, X):
        H = self.dropout(F, gelu(F, self.W_1(X)))                         # (b, T, mlp_num_hiddens)
        return self.dropout(F, self.W_2(H))                               # (b, T, num_hiddens)


class ViTBlock(_Block):
    attentions = ("attention",)

    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout=0.0, bias=False):
        super().__init__()
        self.norm1 = LayerNorm(num_hiddens)
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.norm2 = LayerNorm(num_hiddens)
        self.mlp = ViTMLP(num_hiddens, mlp_num_hiddens, dropout)

    def __call__(self, X, valid_lens=None, *, training=None):
        if _traced(self, X, valid_lens=valid_lens):
            keep = _graph_keep(X)                                           # every key
        else:
            _checks.check_sequence_input(X.shape, self.norm1.gamma.shape[0])
            keep = self.attention.keep(X, X, X, valid_lens, None)          # broadcasts to (b, heads, T, T)
        return self.graph(training, X, keep)

    def hybrid_forward(self, F, X, keep):
        Y = self.norm1(X)                                                  # pre-norm: normalize, then attend
        X = X + self.attention.with_keep(Y, Y, Y, keep)                    # (b, T, h)
        return self.with_weights(X + self.mlp(self.norm2(X)))              # (b, T, h), then the weights

    @property
    def attention_weights(self):
        return self.attention.attention_weights                            # (b, heads, T, T)


class ViT(nn.HybridBlock):
    """Patch embedding, class token, positions, blocks `blocks.{i}`, norm and head, as one graph that
    also returns each block's attention weights."""

    def __init__(self, image_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blocks,
                 num_classes, dropout=0.0, bias=False):
        super().__init__()
        self.patch_embedding = PatchEmbedding(image_size, patch_size, num_channels, num_hiddens)
        h, n = num_hiddens, self.patch_embedding.num_patches + 1           # the class token and the patches
        self.cls_token = self.params.get("cls_token", shape=(1, 1, h), init="zeros")
        self.pos_embedding = self.params.get("pos_embedding", shape=(1, n, h), init=init.Normal(0.02))
        self.rate = _checks.checked_dropout_rate(dropout)
        self.blocks = nn.HybridSequential()
        for _ in range(_checks.checked_positive_int("num_blocks", num_blocks)):
            self.blocks.add(ViTBlock(h, mlp_num_hiddens, num_heads, dropout, bias))
        self.norm = LayerNorm(h)
        self.W_head = nn.Dense(_checks.checked_positive_int("num_classes", num_classes), flatten=False, in_units=h)
        self.W_head.initialize(DENSE_INIT)
        self.cls_token.initialize()
        self.pos_embedding.initialize()

    def __call__(self, images, *, training=None):
        if _traced(self, images):
            keep = _graph_keep(images)                                      # every key
        else:
            images = tensor(images)
            keep = np.ones((1,), dtype=bool, ctx=images.ctx)               # every key
        with _train_mode(training):
            logits, *saved = super().__call__(images, keep)
        for i, block in enumerate(self.blocks):
            block.attention.save_weights(*saved[2 * i: 2 * i + 2])           # (weights, live) of each
        return logits

    def hybrid_forward(self, F, images, keep, cls_token, pos_embedding):
        X = self.patch_embedding(images)                                   # (b, N, h)
        cls = F.np.zeros_like(X[:, :1]) + cls_token                        # (b, 1, h)
        X = F.np.concatenate([cls, X], axis=1) + pos_embedding             # (b, N + 1, h)
        X, saved = F.npx.dropout(X, p=self.rate) if self.rate else X, []   # active only in training
        for block in self.blocks:
            X, *weights = nn.HybridBlock.__call__(block, X, keep)          # the block's graph: out, weights, live
            saved += weights
        return (self.W_head(self.norm(X[:, 0])), *saved)                   # (b, num_classes), then per block

    @property
    def attention_weights(self):
        return [block.attention_weights for block in self.blocks]          # each (b, heads, N + 1, N + 1)
