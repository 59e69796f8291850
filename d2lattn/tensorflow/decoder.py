"""Decoder-only language models: CausalSelfAttention with a K/V cache, TransformerLM, generate."""

import math

import keras
import numpy as np
import tensorflow as tf

from d2lattn import _checks, hub, sampling
from d2lattn.tensorflow.attention import MultiHeadAttention, _dense_layer
from d2lattn.tensorflow.blocks import RMSNorm, SwiGLUFFN
from d2lattn.tensorflow.encoding import RotaryPositionalEncoding
from d2lattn.tensorflow.latent import MultiHeadLatentAttention
from d2lattn.tensorflow.linear import GatedDeltaNet
from d2lattn.tensorflow.ops import _Layer, causal_mask
from d2lattn.tensorflow.params import get_params, set_params
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

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, head_size=None, window=None,
                 rope_base=10000.0, dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        super().__init__(num_hiddens, num_heads, dropout, bias, num_kv_heads=num_kv_heads, head_size=head_size)
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
        self.W_gate = _dense_layer(h, self.num_heads * dh) if output_gate else None  # (h, heads * dh)

    def _rotate(self, X, offset):
        """RoPE on the first `rotary` features of each head, the rest as they are."""
        r = self.rotary
        return tf.concat([self.rope(X[..., :r], offset=offset), X[..., r:]], -1)  # (b, heads, T, dh)

    def call(self, X, *, cache=None, position=None, training=None):
        _checks.check_sequence_input(X.shape, self.W_q.kernel.shape[0])
        _checks.check_cache(cache, X.shape[0], self.num_kv_heads, self.head_size, self.window)
        start = position if position is not None else _seen(cache)     # positions seen before
        q = self._split_heads(self.W_q(X))                                 # (b, heads, T, dh)
        k = self._split_heads(self.W_k(X))                                 # (b, kv_heads, T, dh)
        v = self._split_heads(self.W_v(X))                                 # (b, kv_heads, T, dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                          # per head, before the rotation
        if self.rope is not None:
            q, k = self._rotate(q, start), self._rotate(k, start)          # at positions start .. start + T - 1
        T = tf.shape(X)[1] if X.shape[1] is None else X.shape[1]          # a number where it is known
        if position is not None and self.window is None:
            k, v = (keras.ops.slice_update(buffer, (0, 0, position, 0), new)  # (b, kv_heads, max_len, dh)
                    for buffer, new in zip(cache, (k, v)))
            mask = causal_mask(T, tf.shape(k)[2], offset=start)            # (T, max_len): later slots unseen
        else:
            if cache is not None:
                k, v = tf.concat([cache[0], k], 2), tf.concat([cache[1], v], 2)  # (b, kv_heads, n = cached + T, dh)
            n = tf.shape(k)[2]
            mask = causal_mask(T, n, offset=n - T, window=self.window)     # (T, n): lower right
            mask &= tf.range(n) >= n - T - start                           # not a buffer's slots before 0
        gate = None if self.W_gate is None else self._split_heads(tf.sigmoid(self.W_gate(X)))  # (b, heads, T, dh)
        sinks = None if self.sinks is None else self.sinks[:, None]        # (heads, 1): every row
        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)
        return Y, (k, v) if self.window is None else _rolled(k, v, self.window, start + T)  # (b, T, num_hiddens)


def _seen(cache):
    """How many positions a cache has seen (its length may be known only at run time)."""
    if cache is None or len(cache) == 3:
        return _checks.cached_positions(cache)
    return tf.shape(cache[0])[2]


def _rolled(k, v, window, position):
    """A window's cache: the last window - 1 (at least one) keys and values (b, kv_heads, keep, dh),
    zeros in front of the first position, and the position the next call starts at (an int32
    tensor: Keras takes no nested argument that mixes tensors and numbers). Nothing older is ever
    seen again, so its memory stays the same however long the sequence grows (and its shape too,
    so one trace serves every token)."""
    keep = max(window - 1, 1)                                          # one slot at least (window 1: always masked)
    k, v = (tf.concat([tf.zeros(tf.concat([tf.shape(x)[:2], [keep], tf.shape(x)[3:]], 0)), x], 2) for x in (k, v))
    return k[:, :, tf.shape(k)[2] - keep:], v[:, :, tf.shape(v)[2] - keep:], tf.cast(position, tf.int32)


class TransformerLMBlock(_Layer):
    """One pre-norm block: X + attention(norm1(X)), then + ffn(norm2(X)); dropout (training
    only) on the attention weights and on each branch before it is added."""

    def __init__(self, num_hiddens, num_heads, ffn_num_hiddens, *, num_kv_heads, window, rope_base, dropout,
                 norm_eps, post_norms=False, ffn_activation="silu", attention="mha",
                 mla=None, gated_deltanet=None, **options):
        super().__init__()
        self.norm1 = RMSNorm(num_hiddens, norm_eps)
        if attention == "mla":   # DeepSeek's latent attention; the open-model options are CausalSelfAttention's
            self.attention = MultiHeadLatentAttention(num_hiddens, num_heads, rope_base=rope_base, dropout=dropout,
                                                      **mla)
        elif attention == "gated_deltanet":  # Qwen3-Next's linear layer: a state of constant size, no positions
            self.attention = GatedDeltaNet(num_hiddens, **{"num_heads": num_heads, "norm_eps": norm_eps,
                                                           **gated_deltanet})
        else:
            self.attention = CausalSelfAttention(num_hiddens, num_heads, num_kv_heads=num_kv_heads, window=window,
                                                 rope_base=rope_base, dropout=dropout, norm_eps=norm_eps, **options)
        self.norm2 = RMSNorm(num_hiddens, norm_eps)
        self.ffn = SwiGLUFFN(num_hiddens, ffn_num_hiddens, activation=ffn_activation)
        self.post_norm1 = RMSNorm(num_hiddens, norm_eps) if post_norms else None  # Gemma: on each branch too
        self.post_norm2 = RMSNorm(num_hiddens, norm_eps) if post_norms else None
        self.dropout = keras.layers.Dropout(_checks.checked_dropout_rate(dropout))
        self.built = True  # weights made above: nothing for Keras to build on the first call

    @staticmethod
    def _post(norm, Y):
        """A branch's output, through its post-norm where the block has one (Gemma 2 and 3)."""
        return Y if norm is None else norm(Y)

    def call(self, X, *, cache=None, position=None, training=None):
        Y, cache = self.attention(self.norm1(X), cache=cache, position=position, training=training)
        X = X + self.dropout(self._post(self.post_norm1, Y), training=training)  # (b, T, h)
        Y = self.ffn(self.norm2(X))                                         # (b, T, h)
        X = X + self.dropout(self._post(self.post_norm2, Y), training=training)
        return X, cache


class TransformerLM(_Layer):
    """`position`: as CausalSelfAttention's, for every block (generate's fixed-shape step).
    Tied (W_out None), the Embedding's table (vocab, h) maps back to the vocabulary."""

    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, head_size=None, window=None, rope_base=10000.0, dropout=0.0, norm_eps=1e-6,
                 tie_embeddings=False, final_logit_cap=None, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, post_norms=False,
                 scale_embeddings=False, ffn_activation="silu", attention="mha", mla=None,
                 gated_deltanet=None):
        super().__init__()
        self.config = hub.arguments(locals())                         # what save_pretrained writes
        layer = dict(norm_eps=norm_eps, post_norms=post_norms, ffn_activation=ffn_activation,
                     gated_deltanet=gated_deltanet)
        options = dict(head_size=head_size, qk_norm=qk_norm, sinks=sinks, output_gate=output_gate,
                       logit_cap=logit_cap, rope_fraction=rope_fraction, rope_scaling=rope_scaling,
                       attention_bias=attention_bias)
        L = _checks.checked_positive_int("num_layers", num_layers)
        kinds = _checks.checked_layer_kinds(attention, L, mla, gated_deltanet)  # one of LAYER_KINDS per layer
        self.embedding = _embedding_layer(vocab_size, num_hiddens)
        self.embedding_scale = math.sqrt(num_hiddens) if scale_embeddings else 1.0  # Gemma: times sqrt(h)
        self.blocks = [TransformerLMBlock(num_hiddens, num_heads, ffn_num_hiddens, num_kv_heads=num_kv_heads,
                                          window=w, rope_base=base, dropout=dropout, attention=kind,
                                          mla=mla, **layer, **options)
                       for w, base, kind in zip(_checks.per_layer("window", window, L),
                                          _checks.per_layer("rope_base", rope_base, L), kinds)]
        self.norm = RMSNorm(num_hiddens, norm_eps)
        self.W_out = None if tie_embeddings else _dense_layer(num_hiddens, vocab_size)
        self.final_logit_cap = None if final_logit_cap is None else _checks.checked_positive_number(
            "final_logit_cap", final_logit_cap)
        self.built = True  # weights made above: nothing for Keras to build on the first call

    def call(self, tokens, *, cache=None, position=None, training=None):
        tokens = tf.convert_to_tensor(tokens)
        _checks.check_tokens(tokens.shape, "tokens")
        _checks.check_lm_cache(cache, len(self.blocks))
        X = self.embedding(tokens) * self.embedding_scale                  # (b, T, h)
        caches = []
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            X, block_cache = block(X, cache=block_cache, position=position, training=training)
            caches.append(block_cache)
        X = self.norm(X)
        logits = (tf.matmul(X, self.embedding.embeddings, transpose_b=True) if self.W_out is None
                  else self.W_out(X))                                      # (b, T, vocab)
        if self.final_logit_cap is not None:
            logits = self.final_logit_cap * tf.tanh(logits / self.final_logit_cap)  # soft-capped in (-cap, cap)
        return logits, caches                                              # one cache per block


def _calls(model):
    """One tf.function per model and mode, kept on the model, whose signature leaves batch, steps
    and buffer length unknown: traced once, whatever the prompt, the number of tokens or the position."""
    if not hasattr(model, "_generate_calls"):
        tokens, position = tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((), tf.int32)
        caches = [_specs(block.attention) for block in model.blocks]

        @tf.function(input_signature=[tokens, position, caches])
        def step(tokens, position, buffers):
            logits, buffers = model(tokens, cache=buffers, position=position, training=False)
            return logits[:, -1], buffers                                  # (b, vocab), the buffers

        @tf.function(input_signature=[tokens])
        def full(tokens):
            return model(tokens, training=False)[0][:, -1]                  # (b, vocab)

        model._generate_calls = step, full
    return model._generate_calls


def _specs(attention):
    """A layer's cache in the step's signature: each buffer with its batch (first axis) and length
    (second to last) unknown, a scalar position as it is; a GatedDeltaNet's state (conv, S), whose
    size does not depend on the length, with its batch unknown only."""
    buffers = _buffers(attention, 1, 1)
    if isinstance(attention, GatedDeltaNet):
        return tuple(tf.TensorSpec((None, *x.shape[1:]), x.dtype) for x in buffers)
    return tuple(_spec(x) for x in buffers)


def _spec(buffer):
    """A cache buffer's TensorSpec, batch (first axis) and length (second to last) unknown; a scalar
    position as it is."""
    if not buffer.shape.rank:
        return tf.TensorSpec((), buffer.dtype)
    return tf.TensorSpec((None, *buffer.shape[1:-2], None, buffer.shape[-1]), buffer.dtype)


def _buffers(attention, b, L):
    """A layer's empty cache for generate: (keys, values) (b, kv_heads, L, dh) for the whole
    sequence, or a window's rolling buffer of window - 1 positions, at position 0; a latent
    attention's (latents (b, L, r), rotary keys (b, L, dr)); a GatedDeltaNet's its state (conv, S),
    the same size at every position (it ignores `position`)."""
    if isinstance(attention, GatedDeltaNet):
        return attention.empty_cache(tf.zeros((b, 0, attention.W_q.kernel.shape[0])))
    if isinstance(attention, MultiHeadLatentAttention):
        return tuple(tf.zeros((b, L, attention.sizes[n])) for n in ("kv_lora_rank", "qk_rope_head_size"))
    if attention.window is None:
        shape = (b, attention.num_kv_heads, L, attention.head_size)        # (b, kv_heads, L, dh)
        return tf.zeros(shape), tf.zeros(shape)
    shape = (b, attention.num_kv_heads, max(attention.window - 1, 1), attention.head_size)  # (b, kv_heads, keep, dh)
    return tf.zeros(shape), tf.zeros(shape), tf.constant(0)


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
    buffers = [_buffers(block.attention, len(tokens), tokens.shape[1] + num_tokens)
               for block in model.blocks] if use_cache else None
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


def from_pretrained(path, *, dtype="float32"):
    """A TransformerLM with the weights of a Hugging Face model directory (`d2lattn.hub` reads it)."""
    kwargs, params = hub.load(path, dtype)
    model = TransformerLM(**kwargs)
    set_params(model, params)
    return model


def save_pretrained(model, path, *, family="llama"):
    """config.json and model.safetensors that transformers' AutoModelForCausalLM opens."""
    hub.save(model.config, get_params(model), path, family)
