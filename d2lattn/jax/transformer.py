"""The encoder-decoder Transformer assembled from the blocks: embeddings scaled by sqrt(num_hiddens),
sinusoidal positions, a stack of encoder or decoder blocks, and the decoder's map to the vocabulary.

As in attention.py: `rngs` (keyword-only, default `nnx.Rngs(0)`) seeds the initial weights and dropout.
"""

import math

import jax.numpy as jnp
from flax import nnx

from d2lattn import _checks
from d2lattn.jax.blocks import TransformerDecoderBlock, TransformerEncoderBlock
from d2lattn.jax.encoding import PositionalEncoding


class TransformerEncoder(nnx.Module):
    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False, *,
                 rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.embedding = nnx.Embed(v, h, rngs=rngs)
        self.pos_encoding = PositionalEncoding(h, dropout, rngs=rngs)
        self.blocks = nnx.List([TransformerEncoderBlock(h, ffn_num_hiddens, num_heads, dropout, bias, rngs=rngs)
                                for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))])

    def __call__(self, tokens, valid_lens=None, *, training=None):
        tokens = jnp.asarray(tokens)
        _checks.check_tokens(tokens.shape, "tokens")
        X = self.pos_encoding(self.embedding(tokens) * math.sqrt(self.num_hiddens), training=training)  # (b, T, h)
        for block in self.blocks:
            X = block(X, valid_lens, training=training)                  # (b, T, h)
        return X

    @property
    def attention_weights(self):
        return [block.attention.attention_weights for block in self.blocks]   # each (b, heads, T, T)


class TransformerDecoder(nnx.Module):
    """The state is (enc_outputs, enc_valid_lens, caches), caches holding each block's inputs so
    far (None before the first call): a call continues the sequence after them."""

    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False, *,
                 rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.embedding = nnx.Embed(v, h, rngs=rngs)
        self.pos_encoding = PositionalEncoding(h, dropout, rngs=rngs)
        self.blocks = nnx.List([TransformerDecoderBlock(h, ffn_num_hiddens, num_heads, dropout, bias, rngs=rngs)
                                for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))])
        self.W_out = nnx.Linear(h, v, rngs=rngs)

    def init_state(self, enc_outputs, enc_valid_lens=None):
        return enc_outputs, enc_valid_lens, [None] * len(self.blocks)

    def __call__(self, X, state, *, training=None):
        enc_outputs, enc_valid_lens, caches = state                      # (b, S, h), (b,), per block
        X = jnp.asarray(X)
        _checks.check_tokens(X.shape)
        start, caches = (0 if caches[0] is None else caches[0].shape[1]), list(caches)   # positions so far
        X = self.embedding(X) * math.sqrt(self.num_hiddens)              # (b, T, h)
        X = self.pos_encoding(X, offset=start, training=training)
        if caches[0] is None:                                            # the whole sequence, causally
            caches = []
            for block in self.blocks:
                caches.append(X)                                         # each block's inputs
                X = block(X, enc_outputs, enc_valid_lens, training=training)
        else:                                                            # one position at a time
            steps = []
            for x in jnp.split(X, X.shape[1], axis=1):                   # (b, 1, h)
                for i, block in enumerate(self.blocks):
                    x, caches[i] = block.step(x, enc_outputs, enc_valid_lens, caches[i], training=training)
                steps.append(x)
            X = jnp.concatenate(steps, axis=1)                           # (b, T, h)
        return self.W_out(X), (enc_outputs, enc_valid_lens, caches)      # (b, T, vocab)

    @property
    def attention_weights(self):
        """Per block, (self-attention (b, heads, T, t), encoder-decoder attention (b, heads, T, S)) of the
        last call (in steps: of its last position)."""
        return [(block.attention1.attention_weights, block.attention2.attention_weights) for block in self.blocks]
