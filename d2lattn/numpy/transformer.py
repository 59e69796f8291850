"""The encoder-decoder Transformer assembled from the blocks: embeddings scaled by sqrt(num_hiddens),
sinusoidal positions, a stack of encoder or decoder blocks, and the decoder's map to the vocabulary."""

import math

import numpy as np

from d2lattn import _checks
from d2lattn.numpy.attention import _init
from d2lattn.numpy.blocks import TransformerDecoderBlock, TransformerEncoderBlock
from d2lattn.numpy.encoding import PositionalEncoding
from d2lattn.numpy.params import Module


class TransformerEncoder(Module):
    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False):
        super().__init__()
        rng = np.random.default_rng(4)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.params = {"embedding": rng.normal(size=(v, h))}              # (vocab, h)
        self.pos_encoding = PositionalEncoding(h, dropout)
        self.blocks = [TransformerEncoderBlock(h, ffn_num_hiddens, num_heads, dropout, bias)
                       for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))]

    def forward(self, tokens, valid_lens=None, *, training=None):
        _checks.check_tokens(np.shape(tokens), "tokens")
        X = self.params["embedding"][np.asarray(tokens)] * math.sqrt(self.num_hiddens)   # (b, T, h)
        X = self.pos_encoding(X, training=training)
        for block in self.blocks:
            X = block(X, valid_lens, training=training)                  # (b, T, h)
        return X

    @property
    def attention_weights(self):
        return [block.attention.attention_weights for block in self.blocks]   # each (b, heads, T, T)


class TransformerDecoder(Module):
    """The state is (enc_outputs, enc_valid_lens, caches), caches holding each block's inputs so
    far (None before the first call): a call continues the sequence after them."""

    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False):
        super().__init__()
        rng = np.random.default_rng(5)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        h = self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.params = {"embedding": rng.normal(size=(v, h)), "W_out": _init(rng, h, v), "b_out": np.zeros(v)}
        self.pos_encoding = PositionalEncoding(h, dropout)
        self.blocks = [TransformerDecoderBlock(h, ffn_num_hiddens, num_heads, dropout, bias)
                       for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))]

    def init_state(self, enc_outputs, enc_valid_lens=None):
        return enc_outputs, enc_valid_lens, [None] * len(self.blocks)

    def forward(self, X, state, *, training=None):
        enc_outputs, enc_valid_lens, caches = state                      # (b, S, h), (b,), per block
        _checks.check_tokens(np.shape(X))
        start, caches = (0 if caches[0] is None else caches[0].shape[1]), list(caches)   # positions so far
        X = self.params["embedding"][np.asarray(X)] * math.sqrt(self.num_hiddens)        # (b, T, h)
        X = self.pos_encoding(X, offset=start, training=training)
        if caches[0] is None:                                            # the whole sequence, causally
            caches = []
            for block in self.blocks:
                caches.append(X)                                         # each block's inputs
                X = block(X, enc_outputs, enc_valid_lens, training=training)
        else:                                                            # one position at a time
            steps = []
            for x in np.split(X, X.shape[1], axis=1):                    # (b, 1, h)
                for i, block in enumerate(self.blocks):
                    x, caches[i] = block.step(x, enc_outputs, enc_valid_lens, caches[i], training=training)
                steps.append(x)
            X = np.concatenate(steps, axis=1)                            # (b, T, h)
        logits = X @ self.params["W_out"] + self.params["b_out"]         # (b, T, vocab)
        return logits, (enc_outputs, enc_valid_lens, caches)

    @property
    def attention_weights(self):
        """Per block, (self-attention (b, heads, T, t), encoder-decoder attention (b, heads, T, S)) of the
        last call (in steps: of its last position)."""
        return [(block.attention1.attention_weights, block.attention2.attention_weights) for block in self.blocks]
