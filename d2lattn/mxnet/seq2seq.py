"""A GRU and Bahdanau's encoder-decoder with additive attention, Seq2Seq for it and for any encoder and
decoder (the Transformer's), the loss, greedy decoding and beam search, on gluon.rnn.GRU, nn.Embedding and
nn.Dense.

The encoder is one hybridizable graph; the decoder steps through time in Python, so it
is a plain Block whose children (attention, GRU, output layer) hybridize.
"""

import math

import mxnet as mx
import numpy as onp
from mxnet import init, np
from mxnet.gluon import nn, rnn

from d2lattn import _checks, sampling
from d2lattn.mxnet.attention import DENSE_INIT, AdditiveAttention
from d2lattn.mxnet.ops import _F, _train_mode, tensor, to_numpy

# N(0, 1), the reference's (and PyTorch's) default for an embedding table.
EMBEDDING_INIT = init.Normal(1.0)


class GRU(nn.HybridBlock):
    """A stack of one-layer rnn.GRUs, batch first ('NTC'): children l0, l1, ..., with dropout
    between them in training. (MXNet 1.9's oneDNN kernel for a multi-layer rnn.GRU ignores
    its own `dropout` on CPU, so the layers are stacked here.)"""

    def __init__(self, input_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        self.input_size = _checks.checked_positive_int("input_size", input_size)
        self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_layers = _checks.checked_positive_int("num_layers", num_layers)
        self.rate = _checks.checked_dropout_rate(dropout)
        for i in range(self.num_layers):
            setattr(self, f"l{i}", rnn.GRU(self.num_hiddens, layout="NTC",
                                           input_size=self.input_size if i == 0 else self.num_hiddens))
        self.initialize(init.Uniform(1 / math.sqrt(self.num_hiddens)))   # weights as the reference's; biases 0

    def __call__(self, X, state=None, *, training=None):
        L, h = self.num_layers, self.num_hiddens
        if isinstance(X, np.ndarray):                              # concrete, not a graph symbol
            _checks.check_recurrent_input(X.shape, self.input_size, None if state is None else state.shape, L, h)
            state = np.zeros((L, X.shape[0], h), ctx=X.ctx) if state is None else state
        elif state is None:                                        # zeros (layers, b, h) from unknown shapes
            state = mx.sym.np.zeros((L, 1, h)) + mx.sym.np.zeros_like(X[:, 0, :1])
        with _train_mode(training):
            return tuple(super().__call__(X, state))               # (b, T, h), (layers, b, h)

    def hybrid_forward(self, F, X, state):
        last = []
        for i in range(self.num_layers):
            if i and self.rate:
                X = F.npx.dropout(X, p=self.rate)                  # between layers, active only in training
            X, (H,) = getattr(self, f"l{i}")(X, state[i:i + 1])   # (b, T, h), (1, b, h)
            last.append(H)
        return X, F.np.concatenate(last, axis=0)


class Seq2SeqEncoder(nn.HybridBlock):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        self.embedding = nn.Embedding(_checks.checked_positive_int("vocab_size", vocab_size),
                                      _checks.checked_positive_int("embed_size", embed_size))
        self.embedding.initialize(EMBEDDING_INIT)
        self.rnn = GRU(embed_size, num_hiddens, num_layers, dropout)

    def __call__(self, X, valid_lens=None, *, training=None):
        if not isinstance(X, mx.sym.Symbol):                        # concrete (NumPy too), not a graph symbol
            X = tensor(X)
            _checks.check_tokens(X.shape)
        with _train_mode(training):
            return tuple(super().__call__(X))                       # (b, S, h), (layers, b, h)

    def hybrid_forward(self, F, X):
        return self.rnn(self.embedding(X))                          # embedded: (b, S, embed)


class Seq2SeqAttentionDecoder(nn.Block):
    """At each step the top layer's state queries the encoder's outputs; the GRU's
    input is [context; embedded token], context first (num_hiddens + embed_size)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.attention = AdditiveAttention(h, h, h, dropout)
        self.embedding = nn.Embedding(_checks.checked_positive_int("vocab_size", vocab_size),
                                      _checks.checked_positive_int("embed_size", embed_size))
        self.embedding.initialize(EMBEDDING_INIT)
        self.rnn = GRU(embed_size + h, h, num_layers, dropout)
        self.W_out = nn.Dense(vocab_size, flatten=False, in_units=h)
        self.W_out.initialize(DENSE_INIT)
        self.attention_weights = None

    def init_state(self, enc_outputs, enc_state, enc_valid_lens=None):
        return enc_outputs, enc_state, enc_valid_lens

    def __call__(self, X, state, *, training=None):
        enc_outputs, H, enc_valid_lens = state                      # (b, S, h), (layers, b, h), (b,)
        X = tensor(X)
        _checks.check_tokens(X.shape)
        outputs, weights = [], []
        with _train_mode(training):
            for x in np.swapaxes(self.embedding(X), 0, 1):          # (b, embed), one step at a time
                query = np.expand_dims(H[-1], 1)                    # (b, 1, h): the top layer's state
                context = self.attention(query, enc_outputs, enc_outputs, enc_valid_lens)  # (b, 1, h)
                out, H = self.rnn(np.concatenate([context, np.expand_dims(x, 1)], -1), H)  # (b, 1, h)
                outputs.append(out)
                weights.append(self.attention.attention_weights)   # (b, 1, S)
            self.attention_weights = np.concatenate(weights, 1)    # (b, T, S)
            return self.W_out(np.concatenate(outputs, 1)), (enc_outputs, H, enc_valid_lens)  # (b, T, vocab)


class Seq2Seq(nn.Block):
    def __init__(self, src_vocab_size=None, tgt_vocab_size=None, embed_size=None, num_hiddens=None, num_layers=1,
                 dropout=0.0, *, encoder=None, decoder=None):
        super().__init__()
        _checks.check_seq2seq_parts({"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                                     "embed_size": embed_size, "num_hiddens": num_hiddens}, encoder, decoder)
        if encoder is None:                                             # Bahdanau's model of these sizes
            encoder = Seq2SeqEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout)
            decoder = Seq2SeqAttentionDecoder(tgt_vocab_size, embed_size, num_hiddens, num_layers, dropout)
        self.encoder, self.decoder = encoder, decoder

    def __call__(self, src, tgt, src_valid_lens=None, *, training=None):
        state = _initial_state(self, src, src_valid_lens, training)
        return self.decoder(tgt, state, training=training)[0]           # (b, T, vocab)

    @property
    def attention_weights(self):
        return _alignment(self.decoder.attention_weights)              # (b, T, S)


def _initial_state(model, src, src_valid_lens, training):
    """The decoder's state from the encoder's outputs (Bahdanau's: outputs and final state)."""
    encoded = model.encoder(src, src_valid_lens, training=training)
    return model.decoder.init_state(*(encoded if isinstance(encoded, tuple) else (encoded,)), src_valid_lens)


def _alignment(weights):
    """(b, T, S): Bahdanau's weights, or the mean over heads of a Transformer's last block's
    encoder-decoder weights (its decoder's weights are a list, per block (self, cross))."""
    return weights[-1][1].mean(1) if isinstance(weights, list) else weights


def sequence_loss(logits, labels, valid_lens):
    F = _F(logits)                                                      # in a graph too
    if F is mx.nd:
        labels, valid_lens = tensor(labels), tensor(valid_lens)
    nll = -F.npx.pick(F.npx.log_softmax(logits, axis=-1), labels, axis=-1)     # (b, T)
    positions = F.npx.arange_like(logits, axis=1)                       # (T,) float32
    keep = (positions < F.np.expand_dims(valid_lens, 1).astype("float32")).astype("float32")  # (b, T)
    return F.np.sum(nll * keep) / F.np.maximum(F.np.sum(keep), 1)       # no valid token: 0


def greedy_decode(model, src, src_valid_len, bos, eos, num_steps):
    """The most likely token at each step, fed back in, until `eos` or `num_steps` steps.
    Returns the tokens before eos and the attention of every step taken, the eos step
    included: (steps, S)."""
    src = tensor(to_numpy(src)[None])                                   # (1, S)
    state = _initial_state(model, src, tensor(onp.array([int(src_valid_len)], onp.int32)), False)
    token, tokens, weights = tensor(onp.array([[bos]], onp.int32)), [], []
    for _ in range(num_steps):
        logits, state = model.decoder(token, state, training=False)    # (1, 1, vocab)
        token = logits.argmax(-1)                                       # (1, 1)
        weights.append(to_numpy(model.attention_weights[0, 0]))        # (S,)
        if token.item() == eos:
            break
        tokens.append(int(token.item()))
    return tokens, onp.array(weights, dtype=onp.float32).reshape(len(weights), src.shape[1])


def beam_search(model, src, src_valid_len, bos, eos, num_steps, *, beam_size=4, length_penalty=0.6):
    """The search is shared (d2lattn.sampling.beam_search); here the model scores beam_size prefixes
    at a time from one encoding of `src`."""
    k, alpha = _checks.checked_beam_size(beam_size), _checks.checked_length_penalty(length_penalty)
    src = tensor(onp.repeat(to_numpy(src)[None], k, axis=0))            # (k, S): one row per hypothesis
    state = _initial_state(model, src, tensor(onp.full(k, int(src_valid_len), onp.int32)), False)

    def next_logits(prefixes):                                          # (k, t) -> (k, vocab)
        logits = model.decoder(tensor(prefixes), state, training=False)[0]
        return to_numpy(logits[:, -1]).astype(onp.float64)

    return sampling.beam_search(next_logits, bos, eos, num_steps, k, alpha)
