"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""

import keras
import numpy as np
import tensorflow as tf

from d2lattn import _checks, sampling
from d2lattn.tensorflow.attention import MultiHeadAttention, _dense_layer
from d2lattn.tensorflow.blocks import RMSNorm, SwiGLUFFN
from d2lattn.tensorflow.encoding import RotaryPositionalEncoding
from d2lattn.tensorflow.ops import _Layer, causal_mask
from d2lattn.tensorflow.seq2seq import _embedding_layer


class CausalSelfAttention(MultiHeadAttention):
    """MultiHeadAttention's parameters and heads on one sequence: rotary queries and keys, causal
    (and windowed) from the positions, and the keys and values of earlier calls in `cache`.

    `position` (this backend's keyword, for `generate` under tf.function): a scalar int tensor
    where X starts; `cache` is then a pair of buffers preallocated at a fixed length, X's keys and
    values are written into them at `position`, and the causal mask keeps the slots not yet
    written out of sight, so every step has the same shapes and one trace serves them all
    (`.attention_weights` then spans every slot, (b, num_heads, T, max_len)).
    """

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, window=None, rope_base=10000.0,
                 dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False, logit_cap=None,
                 rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads)
        h, dh = self.W_q.kernel.shape[0], self.head_size
        self.window = _checks.checked_window(window)
        self.logit_cap = _checks.checked_logit_cap(logit_cap)
        self.rotary = dh if rope_base is None else _checks.checked_rope_fraction(dh, rope_fraction)  # rotated
        self.rope = None if rope_base is None else RotaryPositionalEncoding(
            self.rotary, _checks.checked_positive_number("rope_base", rope_base), scaling=rope_scaling)
        if attention_bias and not bias:                                    # Qwen2: on W_q, W_k, W_v, not W_o
            for x in "qkv":                                                # a built Dense takes no new weight:
                self._tracker.untrack(dense := getattr(self, f"W_{x}"))    # replaced by a biased one
                setattr(self, f"W_{x}", _dense_layer(*dense.kernel.shape, bias=True))
        self.q_norm = RMSNorm(dh, norm_eps) if qk_norm else None           # over each head's features
        self.k_norm = RMSNorm(dh, norm_eps) if qk_norm else None
        self.sinks = self.add_weight(shape=(self.num_heads,), initializer="zeros", name="sinks") if sinks else None
        self.W_gate = _dense_layer(h, h) if output_gate else None          # (h, heads * dh)

    def _rotate(self, X, offset):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        r = self.rotary
        return tf.concat([self.rope(X[..., :r], offset=offset), X[..., r:]], -1)  # (b, heads, T, dh)

    def call(self, X, *, cache=None, position=None, training=None):
        _checks.check_sequence_input(X.shape, self.W_q.kernel.shape[0])
        _checks.check_cache(cache, X.shape[0], self.num_kv_heads, self.head_size)
        start = position if position is not None else 0 if cache is None else tf.shape(cache[0])[2]
        q = self._split_heads(self.W_q(X))                                 # (b, heads, T, dh)
        k = self._split_heads(self.W_k(X))                                 # (b, kv_heads, T, dh)
        v = self._split_heads(self.W_v(X))                                 # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                          # per head, before the rotation
        if self.rope is not None:
            q, k = self._rotate(q, start), self._rotate(k, start)          # at positions start .. start + T - 1
        if position is not None:
            k, v = (keras.ops.slice_update(buffer, (0, 0, position, 0), new)  # (b, kv_heads, max_len, dh)
                    for buffer, new in zip(cache, (k, v)))
        elif cache is not None:
            k, v = tf.concat([cache[0], k], 2), tf.concat([cache[1], v], 2)  # (b, kv_heads, t + T, dh)
        mask = causal_mask(tf.shape(X)[1], tf.shape(k)[2], offset=start, window=self.window)  # (T, t + T)
        gate = None if self.W_gate is None else self._split_heads(tf.sigmoid(self.W_gate(X)))  # (b, heads, T, dh)
        sinks = None if self.sinks is None else self.sinks[:, None]        # (heads, 1): every row
        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, (k, v)                                                   # (b, T, num_hiddens)


class TransformerLMBlock(_Layer):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads, window, rope_base, dropout,
                 **options):
        super().__init__()
        self.norm1 = RMSNorm(num_hiddens)
        self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                             rope_base=rope_base, dropout=dropout, **options)
        self.norm2 = RMSNorm(num_hiddens)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens)
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, X, *, cache=None, position=None, training=None):
        Y, cache = self.attention(self.norm1(X), cache=cache, position=position, training=training)
        X = X + self.dropout(Y, training=training)                        # (b, T, h)
        X = X + self.dropout(self.ffn(self.norm2(X)), training=training)
        return X, cache


class TransformerLM(_Layer):
    """`position`: as CausalSelfAttention's, for every block (generate's fixed-shape step)."""

    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, window=None, rope_base=10000.0, dropout=0.0, qk_norm=False, sinks=False,
                 output_gate=False, logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False):
        super().__init__()
        options = dict(qk_norm=qk_norm, sinks=sinks, output_gate=output_gate, logit_cap=logit_cap,
                       rope_fraction=rope_fraction, rope_scaling=rope_scaling, attention_bias=attention_bias)
        self.embedding = _embedding_layer(vocab_size, num_hiddens)
        self.blocks = [TransformerLMBlock(num_hiddens, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads,
                                          window=window, rope_base=rope_base, dropout=dropout, **options)
                       for _ in range(_checks.checked_positive_int("num_layers", num_layers))]
        self.norm = RMSNorm(num_hiddens)
        self.W_out = _dense_layer(num_hiddens, vocab_size)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, tokens, *, cache=None, position=None, training=None):
        tokens = tf.convert_to_tensor(tokens)
        _checks.check_tokens(tokens.shape, "tokens")
        _checks.check_lm_cache(cache, len(self.blocks))
        X = self.embedding(tokens)                                         # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            X, block_cache = block(X, cache=block_cache, position=position, training=training)
            caches.append(block_cache)
        return self.W_out(self.norm(X)), caches                            # (b, T, vocab), one cache per block


def _calls(model):
    """One tf.function per model and mode, kept on the model, whose signature leaves batch, steps
    and buffer length unknown: traced once, whatever the prompt, the number of tokens or the position."""
    if not hasattr(model, "_generate_calls"):
        attention = model.blocks[0].attention
        buffer = tf.TensorSpec((None, attention.num_kv_heads, None, attention.head_size), tf.float32)
        tokens = tf.TensorSpec((None, None), tf.int32)

        @tf.function(input_signature=[tokens, tf.TensorSpec((), tf.int32), [(buffer, buffer)] * len(model.blocks)])
        def step(tokens, position, buffers):
            logits, buffers = model(tokens, cache=buffers, position=position, training=False)
            return logits[:, -1], buffers                                  # (b, vocab), the buffers

        @tf.function(input_signature=[tokens])
        def full(tokens):
            return model(tokens, training=False)[0][:, -1]                  # (b, vocab)

        model._generate_calls = step, full
    return model._generate_calls


def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """Against retracing at every token, each token runs in one traced call whose shapes do not
    change: with the cache, the keys and values live in buffers preallocated for the whole length
    (T0 + num_tokens) inside generate; the call writes the new ones at `position`, a tensor, and
    builds its masks from positions (CausalSelfAttention's `position`). Without the cache, the traced
    full pass leaves the length unknown. Both trace once per model (`_calls`)."""
    tokens = np.asarray(prompt).astype(np.int32)                           # (b, T0)
    _checks.check_tokens(tokens.shape, "prompt")
    num_tokens = _checks.checked_positive_int("num_tokens", num_tokens)
    rng = np.random.default_rng(seed)
    step, full = _calls(model)
    attention = model.blocks[0].attention
    shape = (len(tokens), attention.num_kv_heads, tokens.shape[1] + num_tokens, attention.head_size)
    buffers = [(tf.zeros(shape), tf.zeros(shape)) for _ in model.blocks] if use_cache else None
    new, position = tokens, 0                                              # what the next step feeds, and where
    for _ in range(num_tokens):
        if use_cache:
            logits, buffers = step(new, tf.constant(position), buffers)    # (b, vocab)
            position += new.shape[1]
        else:
            logits = full(tokens)                                          # (b, vocab)
        new = sampling.next_tokens(logits.numpy(), temperature, rng)[:, None]  # (b, 1)
        tokens = np.concatenate([tokens, new], 1)
    return tokens                                                          # (b, T0 + num_tokens)
