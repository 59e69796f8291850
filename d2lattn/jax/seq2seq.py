"""A GRU and Bahdanau's encoder-decoder with additive attention, Seq2Seq for it and for any encoder and
decoder (the Transformer's), the loss, greedy decoding and beam search, on nnx.Linear, nnx.Embed and
jax.lax.scan.

nnx.GRUCell has a single bias per gate, on the input side, so it cannot hold the
canonical b_hh (inside the reset gate's product): the GRU here is written from
nnx.Linear maps named like the canonical parameters. As in attention.py, `rngs`
(keyword-only, default `nnx.Rngs(0)`) seeds the initial weights and dropout.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from d2lattn import _checks, sampling
from d2lattn.jax.attention import AdditiveAttention, _deterministic, _forget_weights, _record


class _GRULayer(nnx.Module):
    """One layer of the GRU, its maps named as the canonical W_xr ... b_hh of api.GRU:
    W_xh carries b_xh, W_hh carries b_hh, and b_r, b_z are Params of their own.
    Initial weights as nnx.GRUCell's: LeCun normal, orthogonal recurrent maps, zero biases."""

    def __init__(self, input_size, num_hiddens, *, rngs):
        i, h, orthogonal = input_size, num_hiddens, nnx.initializers.orthogonal()
        self.W_xr = nnx.Linear(i, h, use_bias=False, rngs=rngs)
        self.W_xz = nnx.Linear(i, h, use_bias=False, rngs=rngs)
        self.W_xh = nnx.Linear(i, h, rngs=rngs)
        self.W_hr = nnx.Linear(h, h, use_bias=False, kernel_init=orthogonal, rngs=rngs)
        self.W_hz = nnx.Linear(h, h, use_bias=False, kernel_init=orthogonal, rngs=rngs)
        self.W_hh = nnx.Linear(h, h, kernel_init=orthogonal, rngs=rngs)
        self.b_r = nnx.Param(jnp.zeros(h))
        self.b_z = nnx.Param(jnp.zeros(h))

    def __call__(self, X, H):
        """X (b, T, in), H (b, h) -> (outputs (b, T, h), last state (b, h)).
        The input maps run once for all steps; the scan carries H through time."""
        inputs = (self.W_xr(X) + self.b_r, self.W_xz(X) + self.b_z, self.W_xh(X))   # 3 x (b, T, h)
        outputs, H = _recurrence(H, inputs, self.W_hr.kernel[...], self.W_hz.kernel[...], self.W_hh.kernel[...],
                                 self.W_hh.bias[...])
        return outputs, H                                                         # (b, T, h), (b, h)


@jax.jit
def _recurrence(H, inputs, W_hr, W_hz, W_hh, b_hh):
    """The GRU's loop over time, H (b, h) carried through inputs 3 x (b, T, h) -> (outputs (b, T, h),
    last state (b, h)). Jitted, so that an eager call compiles it once per shape (an eager lax.scan
    compiles its step again at every call); under an outer jit it is inlined."""

    def step(H, x):
        x_r, x_z, x_h = x                                                         # (b, h) each
        r = jax.nn.sigmoid(x_r + H @ W_hr)                                        # reset gate
        z = jax.nn.sigmoid(x_z + H @ W_hz)                                        # update gate
        n = jnp.tanh(x_h + r * (H @ W_hh + b_hh))                                 # candidate
        H = (1 - z) * n + z * H                                                   # (b, h)
        return H, H

    H, outputs = jax.lax.scan(step, H, [jnp.swapaxes(x, 0, 1) for x in inputs])  # time first: (T, b, h)
    return jnp.swapaxes(outputs, 0, 1), H


class GRU(nnx.Module):
    """Children l0, l1, ...: one _GRULayer per layer, so names read `l0.W_xr`."""

    def __init__(self, input_size, num_hiddens, num_layers=1, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.input_size = _checks.checked_positive_int("input_size", input_size)
        self.num_hiddens = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.num_layers = _checks.checked_positive_int("num_layers", num_layers)
        self.dropout = nnx.Dropout(_checks.checked_dropout_rate(dropout), rngs=rngs)
        for i in range(self.num_layers):
            setattr(self, f"l{i}", _GRULayer(self.input_size if i == 0 else self.num_hiddens, self.num_hiddens,
                                            rngs=rngs))

    def __call__(self, X, state=None, *, training=None):
        _checks.check_recurrent_input(X.shape, self.input_size, None if state is None else state.shape,
                                self.num_layers, self.num_hiddens)
        if state is None:
            state = jnp.zeros((self.num_layers, X.shape[0], self.num_hiddens), X.dtype)   # (layers, b, h)
        last = []
        for i in range(self.num_layers):
            if i:
                X = self.dropout(X, deterministic=_deterministic(training))             # between layers only
            X, H = getattr(self, f"l{i}")(X, state[i])                                  # (b, T, h), (b, h)
            last.append(H)
        return X, jnp.stack(last)                                   # (b, T, h), (layers, b, h)


class Seq2SeqEncoder(nnx.Module):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.embedding = nnx.Embed(_checks.checked_positive_int("vocab_size", vocab_size),
                                   _checks.checked_positive_int("embed_size", embed_size), rngs=rngs)
        self.rnn = GRU(embed_size, num_hiddens, num_layers, dropout, rngs=rngs)

    def __call__(self, X, valid_lens=None, *, training=None):
        X = jnp.asarray(X)
        _checks.check_tokens(X.shape)
        embs = self.embedding(X)                                    # (b, S, embed)
        return self.rnn(embs, training=training)                    # (b, S, h), (layers, b, h)


class Seq2SeqAttentionDecoder(nnx.Module):
    """At each step the top layer's state queries the encoder's outputs; the GRU's
    input is [context; embedded token], context first (num_hiddens + embed_size).
    `.attention_weights` (b, T, S) as in DotProductAttention (an nnx.Intermediate)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0, *, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.attention = AdditiveAttention(h, h, h, dropout, rngs=rngs)
        self.embedding = nnx.Embed(_checks.checked_positive_int("vocab_size", vocab_size),
                                   _checks.checked_positive_int("embed_size", embed_size), rngs=rngs)
        self.rnn = GRU(embed_size + h, h, num_layers, dropout, rngs=rngs)
        self.W_out = nnx.Linear(h, vocab_size, rngs=rngs)
        self.last_weights = nnx.Intermediate(None)

    def init_state(self, enc_outputs, enc_state, enc_valid_lens=None):
        return enc_outputs, enc_state, enc_valid_lens

    def __call__(self, X, state, *, training=None):
        enc_outputs, H, enc_valid_lens = state                      # (b, S, h), (layers, b, h), (b,)
        X = jnp.asarray(X)
        _checks.check_tokens(X.shape)
        outputs, weights = [], []
        for x in jnp.unstack(self.embedding(X), axis=1):            # (b, embed), one step at a time
            query = H[-1][:, None]                                  # (b, 1, h): the top layer's state
            context, step_weights = self.attention._call_with_weights(        # (b, 1, h), (b, 1, S)
                query, enc_outputs, enc_outputs, enc_valid_lens, training=training)
            out, H = self.rnn(jnp.concatenate([context, x[:, None]], -1), H, training=training)  # (b, 1, h)
            outputs.append(out)
            weights.append(step_weights)
        _record(self.last_weights, jnp.concatenate(weights, 1))    # (b, T, S)
        return self.W_out(jnp.concatenate(outputs, 1)), (enc_outputs, H, enc_valid_lens)  # (b, T, vocab)

    @property
    def attention_weights(self):
        return self.last_weights.get_value()                       # (b, T, S)


class Seq2Seq(nnx.Module):
    def __init__(self, src_vocab_size=None, tgt_vocab_size=None, embed_size=None, num_hiddens=None, num_layers=1,
                 dropout=0.0, *, encoder=None, decoder=None, rngs=None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        _checks.check_seq2seq_parts({"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                                     "embed_size": embed_size, "num_hiddens": num_hiddens}, encoder, decoder)
        if encoder is None:                                             # Bahdanau's model of these sizes
            encoder = Seq2SeqEncoder(src_vocab_size, embed_size, num_hiddens, num_layers, dropout, rngs=rngs)
            decoder = Seq2SeqAttentionDecoder(tgt_vocab_size, embed_size, num_hiddens, num_layers, dropout, rngs=rngs)
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
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels))   # (b, T)
    keep = jnp.arange(logits.shape[1]) < jnp.asarray(valid_lens)[:, None]             # (b, T)
    return jnp.sum(nll * keep) / jnp.maximum(keep.sum(), 1)             # no valid token: 0


@nnx.jit
def _encode(model, src, src_valid_lens):
    """The compiled encoder, in evaluation mode: src (b, S) -> the decoder's initial state."""
    return _initial_state(model, src, src_valid_lens, False)


@functools.partial(nnx.jit, static_argnums=4)
def _greedy(model, src, src_valid_lens, bos, num_steps):
    """Every greedy step in one compiled loop: src (1, S) -> the tokens of num_steps steps (num_steps,)
    and each step's attention over the source (num_steps, S), eos or not (greedy_decode stops there).
    Step t runs the decoder on the tokens so far, padded to num_steps, from the fresh state and reads
    position t - 1 (see _next_logits): one shape for every step, so the loop compiles once."""
    state = _initial_state(model, src, src_valid_lens, False)

    def step(t, carry):                                                # t = 1, ..., num_steps
        model, prefix, tokens, weights = carry                         # (1, num_steps), (num_steps,), (num_steps, S)
        logits = model.decoder(prefix, state, training=False)[0]       # (1, num_steps, vocab)
        token = logits[0, t - 1].argmax().astype(jnp.int32)           # ()
        prefix = prefix.at[0, t].set(token, mode="drop")               # fed back; past the end at t = num_steps
        return model, prefix, tokens.at[t - 1].set(token), weights.at[t - 1].set(model.attention_weights[0, t - 1])

    start = (model, jnp.full((1, num_steps), bos, jnp.int32), jnp.zeros(num_steps, jnp.int32),
             jnp.zeros((num_steps, src.shape[1]), jnp.float32))
    carry = step(1, start)                          # outside the loop: it gives the recorded weights their shapes
    _, _, tokens, weights = nnx.fori_loop(2, num_steps + 1, step, carry)  # the model's state lifted into the loop
    return tokens, weights


@functools.partial(jax.jit, static_argnums=0)
def _next_logits(graphdef, params, tokens, state, t):
    """The compiled decoder (nnx.merge(graphdef, params)) on tokens (k, num_steps) from a fresh state
    -> the logits after their first t (k, vocab). The tokens after the prefix are padding, which the
    decoder's position t - 1 never sees (its self-attention is causal, a GRU runs forward), so every
    prefix length has one shape: the search compiles once, not once per length. Plain jax.jit, as
    generate's steps: the weights the decoder records stay inside, and every step sees one state."""
    logits = nnx.merge(graphdef, params)(tokens, state, training=False)[0]   # (k, num_steps, vocab)
    return jnp.take(logits, t - 1, axis=1)                              # (k, vocab)


def greedy_decode(model, src, src_valid_len, bos, eos, num_steps):
    """The most likely token at each step, fed back in, until `eos` or `num_steps` steps.
    Returns the tokens before eos and the attention of every step taken, the eos step
    included: (steps, S). All num_steps steps run in one compiled call (_greedy), which is
    cheaper than a call per step; the steps after eos are dropped here."""
    src = jnp.asarray(np.asarray(src))[None]                            # (1, S)
    _forget_weights(model)                                              # one compilation for every call
    tokens, weights = _greedy(model, src, jnp.array([int(src_valid_len)]), int(bos), int(num_steps))
    tokens = np.asarray(tokens).tolist()                                # num_steps tokens
    stop = tokens.index(eos) if eos in tokens else len(tokens)         # the tokens before eos
    return tokens[:stop], np.asarray(weights, np.float32)[:stop + (eos in tokens)]  # eos's step included


def beam_search(model, src, src_valid_len, bos, eos, num_steps, *, beam_size=4, length_penalty=0.6):
    """The search is shared (d2lattn.sampling.beam_search); here the compiled decoder scores beam_size
    prefixes at a time from one encoding of `src`, each padded to num_steps (one compilation)."""
    k, alpha = _checks.checked_beam_size(beam_size), _checks.checked_length_penalty(length_penalty)
    src = jnp.repeat(jnp.asarray(np.asarray(src))[None], k, axis=0)    # (k, S): one row per hypothesis
    _forget_weights(model)                                  # every search compiles what the first did
    state = _encode(model, src, jnp.full((k,), int(src_valid_len)))
    graphdef, params = nnx.split(model.decoder)

    def next_logits(prefixes):                                          # (k, t) -> (k, vocab)
        t = prefixes.shape[1]
        tokens = jnp.asarray(sampling.padded(prefixes, num_steps, bos))  # (k, num_steps)
        return np.asarray(_next_logits(graphdef, params, tokens, state, jnp.int32(t)), dtype=np.float64)

    return sampling.beam_search(next_logits, bos, eos, num_steps, k, alpha)
