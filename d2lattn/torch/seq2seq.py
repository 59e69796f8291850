"""A GRU and Bahdanau's encoder-decoder with additive attention, Seq2Seq for it and for any encoder and
decoder (the Transformer's), the loss, greedy decoding and beam search, on nn.GRU, nn.Embedding and nn.Linear."""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from d2lattn import _checks, sampling
from d2lattn.torch.attention import AdditiveAttention, _record
from d2lattn.torch.ops import _threads_of_its_size


class GRU(nn.GRU):
    """nn.GRU, batch first, with the shared call: `state=None` starts from zeros and
    `training` switches the dropout between layers (the only place it acts)."""

    def __init__(self, input_size, num_hiddens, num_layers=1, dropout=0.0):
        layers, rate = _checks.checked_positive_int("num_layers", num_layers), _checks.checked_dropout_rate(dropout)
        super().__init__(_checks.checked_positive_int("input_size", input_size),
                         _checks.checked_positive_int("num_hiddens", num_hiddens), layers,
                         batch_first=True, dropout=rate if layers > 1 else 0.0)  # one layer: nothing to drop

    def forward(self, X, state=None, *, training=None):
        _checks.check_recurrent_input(X.shape, self.input_size, None if state is None else state.shape,
                                self.num_layers, self.hidden_size)
        if training is None or training == self.training or not self.dropout:
            return super().forward(X, state)                    # (b, T, h), (layers, b, h)
        mode = self.training
        self.train(training)
        try:
            return super().forward(X, state)
        finally:
            self.train(mode)


class Seq2SeqEncoder(nn.Module):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        self.embedding = nn.Embedding(_checks.checked_positive_int("vocab_size", vocab_size),
                                      _checks.checked_positive_int("embed_size", embed_size))
        self.rnn = GRU(embed_size, num_hiddens, num_layers, dropout)

    def forward(self, X, valid_lens=None, *, training=None):
        X = torch.as_tensor(X)
        _checks.check_tokens(X.shape)
        embs = self.embedding(X)                                    # (b, S, embed)
        return self.rnn(embs, training=training)                    # (b, S, h), (layers, b, h)


class Seq2SeqAttentionDecoder(nn.Module):
    """At each step the top layer's state queries the encoder's outputs; the GRU's
    input is [context; embedded token], context first (num_hiddens + embed_size)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        super().__init__()
        h = _checks.checked_positive_int("num_hiddens", num_hiddens)
        self.attention = AdditiveAttention(h, h, h, dropout)
        self.embedding = nn.Embedding(_checks.checked_positive_int("vocab_size", vocab_size),
                                      _checks.checked_positive_int("embed_size", embed_size))
        self.rnn = GRU(embed_size + h, h, num_layers, dropout)
        self.W_out = nn.Linear(h, vocab_size)
        self.attention_weights = None

    def init_state(self, enc_outputs, enc_state, enc_valid_lens=None):
        return enc_outputs, enc_state, enc_valid_lens

    def forward(self, X, state, *, training=None):
        enc_outputs, H, enc_valid_lens = state                      # (b, S, h), (layers, b, h), (b,)
        X = torch.as_tensor(X)
        _checks.check_tokens(X.shape)
        outputs, weights = [], []
        for x in self.embedding(X).unbind(1):                       # (b, embed), one step at a time
            query = H[-1].unsqueeze(1)                              # (b, 1, h): the top layer's state
            context, step_weights = self.attention._call_with_weights(        # (b, 1, h), (b, 1, S)
                query, enc_outputs, enc_outputs, enc_valid_lens, training=training)
            out, H = self.rnn(torch.cat((context, x.unsqueeze(1)), -1), H, training=training)  # (b, 1, h)
            outputs.append(out)
            weights.append(step_weights)
        all_weights = torch.cat(weights, 1)                         # (b, T, S)
        _record(self, all_weights, attention_weights=all_weights)
        return self.W_out(torch.cat(outputs, 1)), (enc_outputs, H, enc_valid_lens)  # (b, T, vocab)


class Seq2Seq(nn.Module):
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
    labels, valid_lens = torch.as_tensor(labels, device=logits.device), torch.as_tensor(valid_lens)
    nll = F.cross_entropy(logits.transpose(1, 2), labels.long(), reduction="none")  # (b, T)
    keep = torch.arange(logits.shape[1], device=logits.device) < valid_lens.to(logits.device).unsqueeze(1)
    return (nll * keep).sum() / keep.sum().clamp(min=1)                 # no valid token: 0


@_threads_of_its_size  # one thread for a small model (d2lattn/torch/ops.py)
@torch.no_grad()
def greedy_decode(model, src, src_valid_len, bos, eos, num_steps):
    """The most likely token at each step, fed back in, until `eos` or `num_steps` steps.
    Returns the tokens before eos and the attention of every step taken, the eos step
    included: (steps, S)."""
    device = next(model.parameters()).device
    src = torch.as_tensor(np.asarray(src), device=device).unsqueeze(0)  # (1, S)
    state = _initial_state(model, src, torch.tensor([int(src_valid_len)], device=device), False)
    token, tokens, weights = torch.tensor([[bos]], device=device), [], []
    for _ in range(num_steps):
        logits, state = model.decoder(token, state, training=False)    # (1, 1, vocab)
        token = logits.argmax(-1)                                       # (1, 1)
        weights.append(model.attention_weights[0, 0].cpu().numpy())     # (S,)
        if token.item() == eos:
            break
        tokens.append(int(token.item()))
    return tokens, np.array(weights, dtype=np.float32).reshape(len(weights), src.shape[1])


@torch.no_grad()
def beam_search(model, src, src_valid_len, bos, eos, num_steps, *, beam_size=4, length_penalty=0.6):
    """The search is shared (d2lattn.sampling.beam_search); here the model scores beam_size prefixes
    at a time from one encoding of `src`."""
    k, alpha = _checks.checked_beam_size(beam_size), _checks.checked_length_penalty(length_penalty)
    device = next(model.parameters()).device
    src = torch.as_tensor(np.asarray(src), device=device).unsqueeze(0).repeat(k, 1)   # (k, S): one row each
    state = _initial_state(model, src, torch.full((k,), int(src_valid_len), device=device), False)

    def next_logits(prefixes):                                          # (k, t) -> (k, vocab)
        logits = model.decoder(torch.as_tensor(prefixes, device=device), state, training=False)[0]
        return logits[:, -1].double().cpu().numpy()

    return sampling.beam_search(next_logits, bos, eos, num_steps, k, alpha)
