"""A GRU and Bahdanau's encoder-decoder with additive attention, Seq2Seq for it and for any encoder and
decoder (the Transformer's), the loss, greedy decoding and beam search, on keras.layers.GRU, Embedding and
Dense."""

import keras
import numpy as np
import tensorflow as tf

from d2lattn import _checks, sampling
from d2lattn.tensorflow.attention import AdditiveAttention, _dense_layer
from d2lattn.tensorflow.ops import _Layer, _RecordedWeights, _records_weights


def _embedding_layer(vocab_size, embed_size):
    """A Keras Embedding whose table (vocab_size, embed_size) exists right away."""
    layer = keras.layers.Embedding(_checks.checked_positive_int("vocab_size", vocab_size),
                                   _checks.checked_positive_int("embed_size", embed_size))
    layer.build()
    return layer


class GRU(_Layer):
    """One keras.layers.GRU per layer (l0, l1, ...; reset_after=True, the canonical candidate
    r * (h W_hh + b_hh)), batch first, with the shared call: `state=None` starts from zeros
    and `training` switches the dropout between layers (the only place it acts)."""

    def __init__(self, input_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        self.input_size = _checks.checked_positive_int("input_size", input_size)
        self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_layers = _checks.checked_positive_int("num_layers", num_layers)
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        for i in range(self.num_layers):
            layer = keras.layers.GRU(self.num_hiddens, return_sequences=True, return_state=True, reset_after=True)
            layer.build((None, None, self.input_size if i == 0 else self.num_hiddens))
            setattr(self, f"l{i}", layer)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, state=None, *, training=None):
        _checks.check_recurrent_input(X.shape, self.input_size, None if state is None else state.shape,
                                self.num_layers, self.num_hiddens)
        last = []
        for i in range(self.num_layers):
            if i:
                X = self.dropout(X, training=training)                   # between layers only
            initial = None if state is None else [state[i]]             # None: zeros
            X, H = getattr(self, f"l{i}")(X, initial_state=initial, training=training)  # (b, T, h), (b, h)
            last.append(H)
        return X, tf.stack(last)                                        # (b, T, h), (layers, b, h)


class Seq2SeqEncoder(_Layer):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        self.embedding = _embedding_layer(vocab_size, embed_size)
        self.rnn = GRU(embed_size, num_hiddens, num_layers, dropout)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, valid_lens=None, *, training=None):
        X = tf.convert_to_tensor(X)
        _checks.check_tokens(X.shape)
        embs = self.embedding(X)                                        # (b, S, embed)
        return self.rnn(embs, training=training)                        # (b, S, h), (layers, b, h)


class Seq2SeqAttentionDecoder(_Layer):
    """At each step the top layer's state queries the encoder's outputs; the GRU's
    input is [context; embedded token], context first (num_hiddens + embed_size)."""

    attention_weights = _RecordedWeights()

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.attention = AdditiveAttention(h, h, h, dropout)
        self.embedding = _embedding_layer(vocab_size, embed_size)
        self.rnn = GRU(embed_size + h, h, num_layers, dropout)
        self.W_out = _dense_layer(h, vocab_size, bias=True)
        self.attention_weights = None
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def init_state(self, enc_outputs, enc_state, enc_valid_lens=None):
        return enc_outputs, enc_state, enc_valid_lens

    def call(self, X, state, *, training=None):
        enc_outputs, H, enc_valid_lens = state                          # (b, S, h), (layers, b, h), (b,)
        X = tf.convert_to_tensor(X)
        _checks.check_tokens(X.shape)
        outputs, weights = [], []
        for x in tf.unstack(self.embedding(X), axis=1):                 # (b, embed), one step at a time
            query = H[-1][:, None]                                      # (b, 1, h): the top layer's state
            context = self.attention(query, enc_outputs, enc_outputs, enc_valid_lens, training=training)  # (b, 1, h)
            out, H = self.rnn(tf.concat([context, x[:, None]], -1), H, training=training)  # (b, 1, h)
            outputs.append(out)
            weights.append(self.attention.attention_weights)           # (b, 1, S)
        self.attention_weights = tf.concat(weights, 1)                 # (b, T, S)
        return self.W_out(tf.concat(outputs, 1)), (enc_outputs, H, enc_valid_lens)  # (b, T, vocab)


class Seq2Seq(_Layer):
    def __init__(self, src_vocab_size=None, tgt_vocab_size=None, embed_size=None, num_hiddens=None, num_layers=1,
                 dropout=0.0, *, encoder=None, decoder=None):
        super().__init__()
        _checks.check_seq2seq_parts({"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                                     "embed_size": embed_size, "num_hiddens": num_hiddens}, encoder, decoder)
        if encoder is None:                                             # Bahdanau's model of these sizes
            encoder = Seq2SeqEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout)
            decoder = Seq2SeqAttentionDecoder(tgt_vocab_size, embed_size, num_hiddens, num_layers, dropout)
        self.encoder, self.decoder = encoder, decoder
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, src, tgt, src_valid_lens=None, *, training=None):
        state = _initial_state(self, src, src_valid_lens, training)
        return self.decoder(tgt, state, training=training)[0]           # (b, T, vocab)

    @property
    def attention_weights(self):
        return _alignment(self.decoder.attention_weights)              # (b, T, S)


def _initial_state(model, src, src_valid_lens, training):
    """The decoder's state from the encoder's outputs (Bahdanau's: outputs and final state)."""
    encoded = model.encoder(src, src_valid_lens, training=training)
    return model.decoder.init_state(*(encoded if isinstance(encoded, (tuple, list)) else (encoded,)), src_valid_lens)


def _alignment(weights):
    """(b, T, S): Bahdanau's weights, or the mean over heads of a Transformer's last block's
    encoder-decoder weights (its decoder's weights are a list, per block (self, cross))."""
    return tf.reduce_mean(weights[-1][1], 1) if isinstance(weights, list) else weights


def sequence_loss(logits, labels, valid_lens):
    labels, valid_lens = tf.convert_to_tensor(labels), tf.convert_to_tensor(valid_lens)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # (b, T)
    keep = tf.cast(tf.range(tf.shape(logits)[1], dtype=valid_lens.dtype) < valid_lens[:, None], nll.dtype)  # (b, T)
    return tf.reduce_sum(nll * keep) / tf.maximum(tf.reduce_sum(keep), 1.0)  # no valid token: 0


# Eager Keras runs a GRU step by step from Python, tens of milliseconds for a sentence;
# traced, well under one. Traced once per model; a new source length relaxes the trace.
@tf.function(reduce_retracing=True)
def _encode(model, src, src_valid_lens):
    return _initial_state(model, src, src_valid_lens, False)           # (b, S) -> the decoder's state


@tf.function(reduce_retracing=True)
def _decode_step(model, token, state):
    """(1, 1) -> (next token (1, 1), state, attention (1, 1, S))."""
    logits, state = model.decoder(token, state, training=False)        # (1, 1, vocab)
    return tf.argmax(logits, -1, output_type=tf.int32), state, model.attention_weights


@tf.function
def _next_logits(model, tokens, state, t):
    """The traced decoder on tokens (k, num_steps) from a fresh state -> the logits after their first t
    (k, vocab). The tokens after the prefix are padding, which the decoder's position t - 1 never sees
    (its self-attention is causal, a GRU runs forward), so every prefix length has one shape: the
    search traces once, not once per length (the decoders unstack their steps, so the length is static)."""
    logits = model.decoder(tokens, state, training=False)[0]           # (k, num_steps, vocab)
    return tf.gather(logits, t - 1, axis=1)                             # (k, vocab)


def greedy_decode(model, src, src_valid_len, bos, eos, num_steps):
    """The most likely token at each step, fed back in, until `eos` or `num_steps` steps.
    Returns the tokens before eos and the attention of every step taken, the eos step
    included: (steps, S)."""
    src = tf.convert_to_tensor(np.asarray(src)[None])                  # (1, S)
    state = _encode(model, src, tf.constant([int(src_valid_len)], src.dtype))
    token, tokens, weights = tf.constant([[bos]]), [], []
    for _ in range(num_steps):
        token, state, attention = _decode_step(model, token, state)    # (1, 1), ..., (1, 1, S)
        weights.append(attention[0, 0].numpy())                        # (S,)
        if int(token[0, 0]) == eos:
            break
        tokens.append(int(token[0, 0]))
    if weights and _records_weights(model.decoder):  # a traced step keeps no weights readable from outside:
        model.decoder.attention_weights = model.decoder.attention.attention_weights = attention   # the last's
    return tokens, np.array(weights, dtype=np.float32).reshape(len(weights), src.shape[1])


def beam_search(model, src, src_valid_len, bos, eos, num_steps, *, beam_size=4, length_penalty=0.6):
    """The search is shared (d2lattn.sampling.beam_search); here the traced decoder scores beam_size
    prefixes at a time from one encoding of `src`, each padded to num_steps (one trace)."""
    k, alpha = _checks.checked_beam_size(beam_size), _checks.checked_length_penalty(length_penalty)
    src = tf.convert_to_tensor(np.repeat(np.asarray(src)[None], k, axis=0))   # (k, S): one row per hypothesis
    state = _encode(model, src, tf.fill([k], tf.constant(int(src_valid_len), src.dtype)))

    def next_logits(prefixes):                                          # (k, t) -> (k, vocab)
        t = prefixes.shape[1]
        tokens = tf.constant(sampling.padded(prefixes, num_steps, bos))  # (k, num_steps)
        return _next_logits(model, tokens, state, tf.constant(t)).numpy().astype(np.float64)

    return sampling.beam_search(next_logits, bos, eos, num_steps, k, alpha)
