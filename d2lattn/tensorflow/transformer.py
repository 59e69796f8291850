"""The encoder-decoder Transformer assembled from the blocks: embeddings scaled by sqrt(num_hiddens),
sinusoidal positions, a stack of encoder or decoder blocks, and the decoder's map to the vocabulary."""

import math

import tensorflow as tf

from d2lattn import _checks
from d2lattn.tensorflow.attention import _dense_layer
from d2lattn.tensorflow.blocks import TransformerDecoderBlock, TransformerEncoderBlock
from d2lattn.tensorflow.encoding import PositionalEncoding
from d2lattn.tensorflow.ops import _Layer
from d2lattn.tensorflow.seq2seq import _embedding_layer


def _length(cache):
    """Steps in a cache (b, t, h): a number, or a tensor where a relaxed trace left t unknown."""
    return tf.shape(cache)[1] if cache.shape[1] is None else cache.shape[1]


def _positions(X):
    """X (b, T, h) split into T steps (b, 1, h); a relaxed trace (greedy_decode's) that left T unknown
    feeds one step, checked when it runs."""
    if X.shape[1] is None:
        tf.debugging.assert_equal(tf.shape(X)[1], 1, "a traced step with unknown length takes one position")
        return [X]
    return tf.split(X, X.shape[1], axis=1)


class TransformerEncoder(_Layer):
    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False):
        super().__init__()
        h = self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.embedding = _embedding_layer(vocab_size, h)
        self.pos_encoding = PositionalEncoding(h, dropout)
        self.blocks = [TransformerEncoderBlock(h, ffn_num_hiddens, num_heads, dropout, bias)
                       for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))]
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, tokens, valid_lens=None, *, training=None):
        tokens = tf.convert_to_tensor(tokens)
        _checks.check_tokens(tokens.shape, "tokens")
        X = self.pos_encoding(self.embedding(tokens) * math.sqrt(self.num_hiddens), training=training)  # (b, T, h)
        for block in self.blocks:
            X = block(X, valid_lens, training=training)                  # (b, T, h)
        return X

    @property
    def attention_weights(self):
        return [block.attention.attention_weights for block in self.blocks]   # each (b, heads, T, T)


class TransformerDecoder(_Layer):
    """The state is (enc_outputs, enc_valid_lens, caches), caches holding each block's inputs so
    far (None before the first call): a call continues the sequence after them."""

    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False):
        super().__init__()
        h = self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.embedding = _embedding_layer(vocab_size, h)
        self.pos_encoding = PositionalEncoding(h, dropout)
        self.blocks = [TransformerDecoderBlock(h, ffn_num_hiddens, num_heads, dropout, bias)
                       for _ in range(_checks.checked_positive_int("num_blocks", num_blocks))]
        self.W_out = _dense_layer(h, vocab_size, bias=True)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def init_state(self, enc_outputs, enc_valid_lens=None):
        return enc_outputs, enc_valid_lens, [None] * len(self.blocks)

    def call(self, X, state, *, training=None):
        enc_outputs, enc_valid_lens, caches = state                      # (b, S, h), (b,), per block
        X = tf.convert_to_tensor(X)
        _checks.check_tokens(X.shape)
        start, caches = (0 if caches[0] is None else _length(caches[0])), list(caches)   # positions so far
        X = self.embedding(X) * math.sqrt(self.num_hiddens)              # (b, T, h)
        X = self.pos_encoding(X, offset=start, training=training)
        if caches[0] is None:                                            # the whole sequence, causally
            caches = []
            for block in self.blocks:
                caches.append(X)                                         # each block's inputs
                X = block(X, enc_outputs, enc_valid_lens, training=training)
        else:                                                            # one position at a time
            steps = []
            for x in _positions(X):                                      # (b, 1, h)
                for i, block in enumerate(self.blocks):
                    x, caches[i] = block.step(x, enc_outputs, enc_valid_lens, caches[i], training=training)
                steps.append(x)
            X = tf.concat(steps, axis=1)                                 # (b, T, h)
        return self.W_out(X), (enc_outputs, enc_valid_lens, caches)      # (b, T, vocab)

    @property
    def attention_weights(self):
        """Per block, (self-attention (b, heads, T, t), encoder-decoder attention (b, heads, T, S)) of the
        last call (in steps: of its last position)."""
        return [(block.attention1.attention_weights, block.attention2.attention_weights) for block in self.blocks]
