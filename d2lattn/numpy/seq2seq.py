"""A GRU and Bahdanau's encoder-decoder with additive attention, Seq2Seq for it and for any encoder and
decoder (the Transformer's), the loss, greedy decoding and beam search: the float64 reference, forward only."""

import math

import numpy as np

from d2lattn import _checks, sampling
from d2lattn.numpy.attention import AdditiveAttention
from d2lattn.numpy.params import Module


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def _uniform(rng, num_hiddens, shape):
    """Uniform in +-1/sqrt(num_hiddens), PyTorch's default for recurrent and dense layers."""
    bound = 1 / math.sqrt(num_hiddens)
    return rng.uniform(-bound, bound, shape)


class _GRULayer(Module):
    """One layer of the GRU: parameters W_xr ... b_hh, the canonical names of api.GRU."""

    def __init__(self, input_size, num_hiddens, rng):
        super().__init__()
        i, h = input_size, num_hiddens
        shapes = {"W_xr": (i, h), "W_xz": (i, h), "W_xh": (i, h), "W_hr": (h, h), "W_hz": (h, h), "W_hh": (h, h),
                  "b_r": (h,), "b_z": (h,), "b_xh": (h,), "b_hh": (h,)}
        self.params = {name: _uniform(rng, h, shape) for name, shape in shapes.items()}

    def forward(self, x, H):
        p = self.params
        r = _sigmoid(x @ p["W_xr"] + H @ p["W_hr"] + p["b_r"])                      # (b, h) reset gate
        z = _sigmoid(x @ p["W_xz"] + H @ p["W_hz"] + p["b_z"])                      # (b, h) update gate
        n = np.tanh(x @ p["W_xh"] + p["b_xh"] + r * (H @ p["W_hh"] + p["b_hh"]))    # (b, h) candidate
        return (1 - z) * n + z * H                                                  # (b, h)


class GRU(Module):
    """Children l0, l1, ...: one _GRULayer per layer, so names read `l0.W_xr`."""

    def __init__(self, input_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        rng = np.random.default_rng(0)  # deterministic; load real weights with set_params
        self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_layers = _checks.checked_positive_int("num_layers", num_layers)
        self.rate = _checks.checked_dropout_rate(dropout)
        self.input_size = _checks.checked_positive_int("input_size", input_size)
        for i in range(self.num_layers):
            setattr(self, f"l{i}", _GRULayer(self.input_size if i == 0 else self.num_hiddens, self.num_hiddens, rng))

    def forward(self, X, state=None, *, training=None):
        _checks.check_recurrent_input(X.shape, self.input_size, None if state is None else np.shape(state),
                                self.num_layers, self.num_hiddens)
        b, h = X.shape[0], self.num_hiddens                         # X (b, T, input_size)
        state = np.zeros((self.num_layers, b, h)) if state is None else state  # (layers, b, h)
        last = []
        for i in range(self.num_layers):
            if i:
                X = self.dropout(X, self.rate, training)            # between layers only
            H, outputs = state[i], []                               # (b, h)
            for x in np.swapaxes(X, 0, 1):                          # (b, in), one step at a time
                H = getattr(self, f"l{i}")(x, H)
                outputs.append(H)
            X = np.stack(outputs, 1) if outputs else np.zeros((b, 0, h))  # (b, T, h)
            last.append(H)
        return X, np.stack(last)                                    # (b, T, h), (layers, b, h)


class Seq2SeqEncoder(Module):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        rng = np.random.default_rng(1)
        shape = (_checks.checked_positive_int("vocab_size", vocab_size),
                 _checks.checked_positive_int("embed_size", embed_size))
        self.params = {"embedding": rng.normal(size=shape)}         # (vocab, embed)
        self.rnn = GRU(embed_size, num_hiddens, num_layers, dropout)

    def forward(self, X, valid_lens=None, *, training=None):
        _checks.check_tokens(np.shape(X))
        embs = self.params["embedding"][np.asarray(X)]              # (b, S, embed)
        return self.rnn(embs, training=training)                    # (b, S, h), (layers, b, h)


class Seq2SeqAttentionDecoder(Module):
    """At each step the top layer's state queries the encoder's outputs; the GRU's
    input is [context; embedded token], context first (num_hiddens + embed_size)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        rng = np.random.default_rng(2)
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        v = _checks.checked_positive_int("vocab_size", vocab_size)
        e = _checks.checked_positive_int("embed_size", embed_size)
        self.attention = AdditiveAttention(h, h, h, dropout)
        self.params = {"embedding": rng.normal(size=(v, e)), "W_out": _uniform(rng, h, (h, v)), "b_out": np.zeros(v)}
        self.rnn = GRU(e + h, h, num_layers, dropout)
        self.attention_weights = None

    def init_state(self, enc_outputs, enc_state, enc_valid_lens=None):
        return enc_outputs, enc_state, enc_valid_lens

    def forward(self, X, state, *, training=None):
        enc_outputs, H, enc_valid_lens = state                      # (b, S, h), (layers, b, h), (b,)
        _checks.check_tokens(np.shape(X))
        embs = self.params["embedding"][np.asarray(X)]              # (b, T, embed)
        outputs, weights = [], []
        for x in np.swapaxes(embs, 0, 1):                           # (b, embed), one step at a time
            query = H[-1][:, None]                                  # (b, 1, h): the top layer's state
            context = self.attention(query, enc_outputs, enc_outputs, enc_valid_lens, training=training)  # (b, 1, h)
            out, H = self.rnn(np.concatenate([context, x[:, None]], -1), H, training=training)  # (b, 1, h)
            outputs.append(out)
            weights.append(self.attention.attention_weights)       # (b, 1, S)
        self.attention_weights = np.concatenate(weights, 1)        # (b, T, S)
        logits = np.concatenate(outputs, 1) @ self.params["W_out"] + self.params["b_out"]  # (b, T, vocab)
        return logits, (enc_outputs, H, enc_valid_lens)


class Seq2Seq(Module):
    def __init__(self, src_vocab_size=None, tgt_vocab_size=None, embed_size=None, num_hiddens=None, num_layers=1,
                 dropout=0.0, *, encoder=None, decoder=None):
        super().__init__()
        _checks.check_seq2seq_parts({"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                                     "embed_size": embed_size, "num_hiddens": num_hiddens}, encoder, decoder)
        if encoder is None:                                             # Bahdanau's model of these sizes
            encoder = Seq2SeqEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout)
            decoder = Seq2SeqAttentionDecoder(tgt_vocab_size, embed_size, num_hiddens, num_layers, dropout)
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src, tgt, src_valid_lens=None, *, training=None):
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
    logits = np.asarray(logits, dtype=np.float64)                       # (b, T, vocab)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, np.asarray(labels)[..., None], -1)[..., 0]  # (b, T)
    keep = np.arange(logits.shape[1]) < np.asarray(valid_lens)[:, None]  # (b, T)
    return np.sum(nll * keep) / max(keep.sum(), 1)                      # no valid token: 0


def greedy_decode(model, src, src_valid_len, bos, eos, num_steps):
    """The most likely token at each step, fed back in, until `eos` or `num_steps` steps.
    Returns the tokens before eos and the attention of every step taken, the eos step
    included: (steps, S)."""
    src = np.asarray(src)[None]                                         # (1, S)
    state = _initial_state(model, src, np.array([src_valid_len]), False)
    token, tokens, weights = np.array([[bos]]), [], []
    for _ in range(num_steps):
        logits, state = model.decoder(token, state, training=False)    # (1, 1, vocab)
        token = logits.argmax(-1)                                       # (1, 1)
        weights.append(model.attention_weights[0, 0])                   # (S,)
        if token.item() == eos:
            break
        tokens.append(int(token.item()))
    return tokens, np.array(weights).reshape(len(weights), src.shape[1])


def beam_search(model, src, src_valid_len, bos, eos, num_steps, *, beam_size=4, length_penalty=0.6):
    """The search is shared (d2lattn.sampling.beam_search); here the model scores beam_size prefixes
    at a time from one encoding of `src`."""
    k, alpha = _checks.checked_beam_size(beam_size), _checks.checked_length_penalty(length_penalty)
    src = np.repeat(np.asarray(src)[None], k, axis=0)                  # (k, S): one row per hypothesis
    state = _initial_state(model, src, np.full(k, src_valid_len), False)

    def next_logits(prefixes):                                          # (k, t) -> (k, vocab)
        return model.decoder(prefixes, state, training=False)[0][:, -1]

    return sampling.beam_search(next_logits, bos, eos, num_steps, k, alpha)
