"""The contract in code: every name each backend exports, with its signature.

Nothing here runs. Each backend (`d2lattn/<name>/__init__.py`) exports every
name below with the same parameters, and `tests/test_api.py` holds them to it.
For a class, `__init__` is the constructor and `__call__` the call; a backend
implements the call the way its framework does (`forward` in PyTorch and
Gluon, `call` in Keras, `__call__` in Flax NNX).

Shapes: batch `b`, queries `q`, key-value pairs `k`, feature sizes `d`, `dv`.
`valid_lens`: integers, `(b,)` per sequence or `(b, q)` per query; a length
beyond the number of keys means all keys. Floating-point lengths (MXNet's
`np.array([2, 3])` is float32) are accepted when every value is a whole
number and mean the same; a fractional length is a ValueError where the values
are known (eager calls); under tracing only the dtype is known, and they are cast. `mask`: booleans broadcastable to
the scores `(b, q, k)`, True = may attend. A position is attended only if
both allow it.

`training`: every module's call takes it. None follows the framework's own mode;
True/False overrides it; modules without dropout ignore it.
"""

# The backend's canonical name, e.g. "torch".
BACKEND = "<name>"


# --- tensor helpers: thin, identical aliases so chapters read the same -----------


def tensor(data, dtype=None):
    """A native array from `data`; float data becomes float32 unless `dtype` says."""


def to_numpy(x):
    """A NumPy copy of `x` (works on arrays that take part in autodiff)."""


def ones(shape):
    """float32 ones."""


def zeros(shape):
    """float32 zeros."""


def arange(start, stop=None, step=1):
    """Like `numpy.arange`; float32 if any bound is a float, else int32."""


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    """float32 normal samples drawn by NumPy, so one seed gives the same numbers
    on every backend."""


def bmm(a, b):
    """Batched matrix product: (b, n, m) @ (b, m, p) -> (b, n, p)."""


def matmul(a, b):
    """Matrix product with broadcasting over leading axes."""


def reshape(x, shape):
    """`x` with a new shape."""


def concat(xs, axis=0):
    """Join arrays along an existing axis."""


def stack(xs, axis=0):
    """Join arrays along a new axis."""


def swapaxes(x, axis1, axis2):
    """`x` with two axes exchanged."""


def exp(x):
    """Elementwise exponential."""


def tanh(x):
    """Elementwise hyperbolic tangent."""


def where(condition, x, y):
    """Elementwise `x` where `condition` else `y`; either may be a Python number."""


def take(table, *indices):
    """table[indices]: one integer index array per leading axis of `table`, broadcast together
    (a mask_mod's or score_mod's lookup, e.g. take(document_ids, b, q_idx))."""


# --- attention ----------------------------------------------------------------


def masked_softmax(X, valid_lens=None, *, mask=None):
    """Softmax over the last axis that gives masked positions weight exactly 0.

    A row with nothing to attend to is all zeros (never NaN, never uniform).
    `valid_lens` indexes the first axis of X ((b,)) or the first and the
    second-to-last ((b, q)). Does not modify X.
    """


def causal_mask(num_queries, num_keys=None, *, offset=0, window=None):
    """Boolean (q, k), a native array. Query i sits at position offset + i, key j at j:
    True iff j <= offset + i and, with a window w (>= 1), offset + i - j < w (each query
    sees itself and the w - 1 positions before it). offset = num_keys - num_queries is the
    lower-right alignment of new queries that continue a cached sequence; offset may be
    negative. The default is the classic lower triangle (j <= i)."""


class DotProductAttention:
    """Scaled dot-product attention: softmax(Q K^T / sqrt(d)) V."""

    def __init__(self, dropout=0.0):
        """`dropout` on the attention weights, active only in training."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, logit_cap=None,
                 sinks=None, training=None):
        """(b, q, d), (b, k, d), (b, k, dv) -> (b, q, dv); sets `.attention_weights` (b, q, k).

        `score_bias`: floats broadcastable to the scores (b, q, k), added to the scaled
        scores before masking and softmax (masked positions still get weight 0);
        gradients flow into it. Queries may carry one more leading axis (b, heads, q, d).
        `logit_cap` (a positive number): the scaled scores become cap * tanh(scores / cap)
        before the bias and the mask (Gemma 2's soft-capping). `sinks`: one logit per row,
        broadcastable to (b, q), that joins the row's softmax as one more column and is then
        dropped (gpt-oss's attention sinks), so a row's weights sum to at most 1 and a row with
        nothing to attend to is still all zeros."""


class AdditiveAttention:
    """Additive (MLP) attention: scores w_v^T tanh(W_q q + W_k k), no biases."""

    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        """Parameters W_q (query_size, h), W_k (key_size, h), w_v (h, 1)."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """(b, q, query_size), (b, k, key_size), (b, k, dv) -> (b, q, dv)."""


class MultiHeadAttention:
    """`num_heads` scaled dot-product attentions in parallel on learned projections.

    Grouped-query attention: `num_kv_heads` (default num_heads) key/value heads, which
    must divide num_heads; query head h uses key/value head h // (num_heads // num_kv_heads).
    num_kv_heads=1 is multi-query attention."""

    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 num_kv_heads=None, head_size=None, query_size=None, key_size=None, value_size=None):
        """W_q (query_size, num_heads * head_size), W_k (key_size, num_kv_heads * head_size),
        W_v (value_size, num_kv_heads * head_size), W_o (num_heads * head_size, num_hiddens);
        head_size (each head's width, the softmax's scale 1 / sqrt(head_size)) defaults to
        num_hiddens // num_heads, which must then divide evenly; given, it is any positive integer
        (Qwen3-0.6B's heads are wider than num_hiddens / num_heads, 128 > 1024 / 16, gemma-3-1b's
        narrower, 256 < 1152 / 4). Biases b_q, b_k, b_v, b_o likewise if `bias`."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, score_bias=None, training=None):
        """-> (b, q, num_hiddens); `.attention_weights` (b, num_heads, q, k).
        `score_bias` broadcasts to (b, num_heads, q, k), e.g. an ALiBi bias (heads, q, k)."""


class PositionalEncoding:
    """Adds sinusoidal position codes: sin in even columns, cos in odd ones."""

    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        """`.P` holds the codes, (1, max_len, num_hiddens)."""

    def __call__(self, X, *, offset=0, training=None):
        """(b, T, num_hiddens) -> X + P[:, offset:offset + T], then dropout: the steps sit at
        positions offset, offset + 1, ... (a decoder continuing a sequence passes how many came before)."""


def alibi_slopes(num_heads):
    """float32 (num_heads,), a native array: Press et al.'s ALiBi slopes. For n a power of
    two, slope h is 2 ** (-8 (h + 1) / n); otherwise the slopes of the largest power of two
    c < n, followed by the first n - c of every other slope of 2c (indices 0, 2, 4, ...)."""


def alibi_bias(num_heads, num_queries, num_keys=None, *, offset=0):
    """float32 (heads, q, k), a native array: -slope[h] * |offset + i - j|, ready for a
    MultiHeadAttention call's `score_bias`."""


class RotaryPositionalEncoding:
    """Rotary position embedding (RoPE), no parameters.

    Row t is at position p = offset + t; theta_i = base ** (-2 i / head_size) for
    i < head_size / 2; each pair (a, b) becomes (a cos(p theta_i) - b sin(p theta_i),
    a sin(p theta_i) + b cos(p theta_i)). Pairs are (x[i], x[i + head_size / 2]) (split
    halves, GPT-NeoX and Hugging Face's LLaMA) by default, (x[2i], x[2i + 1]) with
    `interleaved=True` (RoFormer, Meta's original LLaMA).

    `scaling` rescales theta for contexts longer than the model was trained on, exactly as
    Hugging Face's `modeling_rope_utils` does (see rope_frequencies):
    {"type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (Llama 3.1+), or {"type": "yarn", "factor",
    "original_max_position_embeddings"} with optional "beta_fast" (32), "beta_slow" (1),
    "attention_factor", "mscale", "mscale_all_dim", "truncate" (True) (YaRN: Qwen, gpt-oss,
    DeepSeek); YaRN also multiplies cos and sin by its attention factor."""

    def __init__(self, head_size, base=10000.0, *, interleaved=False, scaling=None):
        """An odd head_size is a ValueError naming head_size; an unknown scaling type, or a
        missing or unknown field, a ValueError naming scaling."""

    def __call__(self, X, *, offset=0, training=None):
        """X (..., T, head_size) -> the same shape, rotated."""


def rope_frequencies(head_size, base=10000.0, scaling=None):
    """(theta, attention_factor): theta NumPy float64 (head_size / 2,), theta_i = base ** (-2 i /
    head_size) rescaled by `scaling` (as RotaryPositionalEncoding's), and the factor YaRN puts
    on cos and sin (1.0 otherwise). Llama 3: wavelengths 2 pi / theta_i longer than
    original_max_position_embeddings / low_freq_factor are divided by `factor`, those shorter
    than original_max_position_embeddings / high_freq_factor kept, and between them theta
    moves smoothly from one to the other. YaRN: a linear ramp over the feature index, from
    the features that turn beta_fast times or more over the original context (kept) to those
    that turn beta_slow times or fewer (divided by `factor`); attention factor
    0.1 ln(factor) + 1. Backend-free (d2lattn/rotary.py): every backend uses these numbers."""


class ConcatAttention:
    """The first classic scoring rule: weights softmax(Linear([q; k])) over `num_values`
    positions, applied to the values, then Linear([q; weights @ values]).

    Its scores come from a linear map of one query and one key to a fixed number
    of slots, so the weight of value j is tied to slot j, not to what value j
    contains: it cannot compare a query with each key's content, cannot attend
    over more values than `num_values`, and does not follow the values if they
    are permuted. Additive and dot-product scoring score every (query, key) pair
    and have none of these limits.
    """

    def __init__(self, query_size, key_size, num_values, value_size, output_size):
        """W_attn (query_size + key_size, num_values), b_attn (num_values,),
        W_combine (query_size + value_size, output_size), b_combine (output_size,)."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """(b, q, query_size), (b, q, key_size), (b, num_values, value_size) -> (b, q, output_size);
        `.attention_weights` (b, q, num_values)."""


# --- transformer blocks -------------------------------------------------------------


class LayerNorm:
    """Layer normalization from scratch: mean and biased variance over the last axis,
    then `gamma` (ones) and `beta` (zeros)."""

    def __init__(self, normalized_size, eps=1e-5):
        """Parameters gamma, beta (normalized_size,)."""

    def __call__(self, X, *, training=None):
        """(..., normalized_size) -> same shape."""


class PositionWiseFFN:
    """The same two-layer MLP at every position: ReLU(X W_1 + b_1) W_2 + b_2."""

    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs):
        """W_1 (num_inputs, ffn_num_hiddens), b_1, W_2 (ffn_num_hiddens, ffn_num_outputs), b_2."""

    def __call__(self, X, *, training=None):
        """(b, T, num_inputs) -> (b, T, ffn_num_outputs)."""


class RMSNorm:
    """Root-mean-square normalization: X / sqrt(mean(X ** 2, -1) + eps) * gamma."""

    def __init__(self, normalized_size, eps=1e-6):
        """Parameter gamma (normalized_size,), ones."""

    def __call__(self, X, *, training=None):
        """(..., normalized_size) -> same shape."""


class SwiGLUFFN:
    """The gated FFN of current models: (g(X W_gate) * (X W_up)) W_down, no biases; the gate g is
    SiLU (SwiGLU, LLaMA's) or, with activation="gelu_tanh", GELU in its tanh form (GeGLU, Gemma's:
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))))."""

    def __init__(self, num_inputs, ffn_num_hiddens, ffn_num_outputs=None, *, activation="silu"):
        """W_gate, W_up (num_inputs, ffn_num_hiddens), W_down (ffn_num_hiddens, ffn_num_outputs
        or num_inputs); activation "silu" or "gelu_tanh"."""

    def __call__(self, X, *, training=None):
        """(..., num_inputs) -> (..., ffn_num_outputs)."""


class AddNorm:
    """Residual connection and layer norm: LayerNorm(dropout(Y) + X)."""

    def __init__(self, normalized_size, dropout=0.0):
        """Child `norm` (LayerNorm): norm.gamma, norm.beta."""

    def __call__(self, X, Y, *, training=None):
        """X, Y (b, T, normalized_size) -> same shape."""


class TransformerEncoderBlock:
    """Self-attention, Add & Norm, position-wise FFN, Add & Norm.

    Children: attention (MultiHeadAttention), addnorm1, ffn, addnorm2."""

    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        """All sizes are num_hiddens but the FFN's hidden layer."""

    def __call__(self, X, valid_lens=None, *, training=None):
        """(b, T, num_hiddens) -> same shape; valid_lens masks padded keys."""


class TransformerDecoderBlock:
    """Causal self-attention, Add & Norm, attention over the encoder's outputs, Add & Norm,
    FFN, Add & Norm. Children: attention1, addnorm1, attention2, addnorm2, ffn, addnorm3."""

    def __init__(self, num_hiddens, ffn_num_hiddens, num_heads, dropout=0.0, bias=False):
        """As TransformerEncoderBlock."""

    def __call__(self, X, enc_outputs, enc_valid_lens=None, *, training=None):
        """All T positions at once, each seeing itself and earlier ones:
        (b, T, h), (b, S, h) -> (b, T, h)."""

    def step(self, X, enc_outputs, enc_valid_lens=None, cache=None, *, training=None):
        """Incremental decoding: X (b, 1, h) is the next position; `cache` (b, t, h) holds the
        block's inputs so far (None at the start). -> (Y (b, 1, h), cache (b, t + 1, h)).
        Step by step it gives the same outputs as the full causal pass."""


# --- sequence to sequence with attention (Bahdanau) --------------------------------


class GRU:
    """A stack of gated recurrent units, batch first.

    Canonical parameters per layer `l{i}.` (inputs of layer i > 0 are layer i-1's states):
    W_xr, W_xz, W_xh (in, h); W_hr, W_hz, W_hh (h, h); b_r, b_z, b_xh, b_hh (h,), with
    r = sigmoid(x W_xr + h W_hr + b_r), z = sigmoid(x W_xz + h W_hz + b_z),
    n = tanh(x W_xh + b_xh + r * (h W_hh + b_hh)), h' = (1 - z) * n + z * h.
    """

    def __init__(self, input_size, num_hiddens, num_layers=1, dropout=0.0):
        """`dropout` between layers, in training only."""

    def __call__(self, X, state=None, *, training=None):
        """X (b, T, input_size), state (num_layers, b, h) or None (zeros)
        -> (outputs (b, T, h), state (num_layers, b, h))."""


class Seq2SeqEncoder:
    """Token embedding (`embedding` (vocab_size, embed_size)) and a GRU (`rnn`)."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        """Children embedding, rnn."""

    def __call__(self, X, valid_lens=None, *, training=None):
        """X int (b, S) -> (outputs (b, S, h), state (num_layers, b, h)). `valid_lens` is taken
        so that every Seq2Seq encoder is called alike, and not needed: the GRU reads left to right,
        so the padding after a sequence changes only outputs that the decoder's attention masks."""


class Seq2SeqAttentionDecoder:
    """Bahdanau's decoder: at each step the top layer's state queries the encoder's outputs
    (AdditiveAttention), and the GRU's input is [context; embedded token], context first
    (rows 0:num_hiddens of rnn.l0.W_x* take the context).
    Children: attention, embedding, rnn, W_out (h, vocab_size) with b_out."""

    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers=1, dropout=0.0):
        """The GRU takes embed_size + num_hiddens inputs."""

    def init_state(self, enc_outputs, enc_state, enc_valid_lens=None):
        """The decoder's state: (enc_outputs, enc_state, enc_valid_lens)."""

    def __call__(self, X, state, *, training=None):
        """X int (b, T) -> (logits (b, T, vocab_size), state); `.attention_weights` (b, T, S)."""


class Seq2Seq:
    """Encoder and decoder with teacher forcing. Children encoder, decoder.

    The parts talk through the decoder's state: `encoder(src, src_valid_lens)` returns its
    outputs (a tuple is spread), `decoder.init_state(*outputs, src_valid_lens)` makes the
    state, and `decoder(tgt, state)` returns (logits, the state after tgt)."""

    def __init__(self, src_vocab_size=None, tgt_vocab_size=None, embed_size=None, num_hiddens=None, num_layers=1,
                 dropout=0.0, *, encoder=None, decoder=None):
        """Bahdanau's model from its sizes (Seq2SeqEncoder and Seq2SeqAttentionDecoder), or the given
        `encoder` and `decoder` (e.g. TransformerEncoder and TransformerDecoder) and no sizes."""

    def __call__(self, src, tgt, src_valid_lens=None, *, training=None):
        """src int (b, S), tgt int (b, T) (the decoder's inputs) -> logits (b, T, tgt_vocab_size);
        `.attention_weights` (b, T, S): Bahdanau's attention, or the Transformer's last block's
        encoder-decoder attention averaged over the heads."""


def sequence_loss(logits, labels, valid_lens):
    """Softmax cross-entropy averaged over the valid (non-padding) tokens: a scalar.
    logits (b, T, vocab), labels int (b, T), valid_lens int (b,)."""


def greedy_decode(model, src, src_valid_len, bos, eos, num_steps):
    """Translate one sequence: src ints (S,) -> (token ids before eos, np attention (steps, S)),
    one attention row per step taken, the step that produced eos included."""


def beam_search(model, src, src_valid_len, bos, eos, num_steps, *, beam_size=4, length_penalty=0.6):
    """Translate one sequence keeping the `beam_size` most likely hypotheses at every step:
    src ints (S,) -> (token ids before eos, score, beam), for any Seq2Seq.

    Each step extends every live hypothesis by every token (log-probabilities in float64) and
    keeps the beam_size best extensions; one that ends in eos is finished and leaves the beam
    (kept aside, whatever its length). The search stops when nothing is live or after num_steps
    steps (the live ones then count as finished). The answer is the finished
    hypothesis of best score: Wu et al. (2016)'s length normalization, log P / ((5 + L) / 6) **
    length_penalty, with L the number of scored tokens (eos included); length_penalty=0 ranks by
    log P. `beam`: per step, the kept extensions as (tokens, log P, finished), best first.
    beam_size=1 gives greedy_decode's tokens. Each step rescores every hypothesis's whole
    prefix from the encoder's state (no cache to reorder: the sequences here are short)."""


def train_lm(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """The framework's own Adam with global-norm clipping on sequence_loss, a progress bar, and
    the loss curve (each epoch's mean loss). batches: a re-iterable of NumPy
    (inputs int (b, T), labels int (b, T), valid_lens int (b,))."""


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Adam with gradient clipping (global norm `clip`) on sequence_loss, a progress bar,
    and the loss curve: a list with each epoch's mean loss.
    batches: a re-iterable of NumPy (src, src_valid_lens, dec_input, labels, label_valid_lens)."""


# --- the encoder-decoder Transformer ------------------------------------------------


class TransformerEncoder:
    """Token embedding (`embedding` (vocab_size, num_hiddens)) times sqrt(num_hiddens), sinusoidal
    PositionalEncoding, and `num_blocks` TransformerEncoderBlocks `blocks.{i}`."""

    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False):
        """Parameters embedding, blocks.0.attention.W_q, ..., blocks.{i}.addnorm2.norm.beta."""

    def __call__(self, tokens, valid_lens=None, *, training=None):
        """tokens int (b, T) -> (b, T, num_hiddens); valid_lens masks padded keys.
        `.attention_weights`: a list, one (b, num_heads, T, T) per block."""


class TransformerDecoder:
    """The same embedding (times sqrt(num_hiddens)) and positions, `num_blocks`
    TransformerDecoderBlocks `blocks.{i}`, and a dense map W_out (num_hiddens, vocab_size), b_out
    to the vocabulary. A decoder for Seq2Seq(encoder=TransformerEncoder(...), decoder=...)."""

    def __init__(self, vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blocks, dropout=0.0, bias=False):
        """Parameters embedding, blocks.{i}.attention1.W_q, ..., W_out, b_out."""

    def init_state(self, enc_outputs, enc_valid_lens=None):
        """(enc_outputs, enc_valid_lens, caches): caches holds each block's inputs so far, None at first."""

    def __call__(self, X, state, *, training=None):
        """X int (b, T) -> (logits (b, T, vocab_size), state). With a fresh state, all T positions
        at once, each seeing itself and earlier ones (teacher forcing); with the state of an earlier
        call, X continues that sequence one position at a time through each block's `step`, at
        positions after it: feeding a sequence in pieces gives the logits of one full pass.
        `.attention_weights`: per block, (masked self-attention (b, num_heads, T, t),
        encoder-decoder attention (b, num_heads, T, S)) of the last call (in steps: its last position)."""


# --- decoder-only language models ------------------------------------------------


class CausalSelfAttention:
    """The attention layer of a decoder-only model, with a key/value cache.

    Parameters as MultiHeadAttention(num_hiddens, num_heads, bias=bias,
    num_kv_heads=num_kv_heads, head_size=head_size): W_q (num_hiddens, num_heads * head_size),
    W_k, W_v (num_hiddens, num_kv_heads * head_size), W_o (num_heads * head_size, num_hiddens),
    head_size None meaning num_hiddens // num_heads; scores are scaled by 1 / sqrt(head_size).
    Rotary encoding (split halves, base `rope_base`; None for none, a NoPE layer) rotates each
    head's queries and keys at their absolute positions; causal, and with a sliding `window` each
    position sees itself and the window - 1 before it. With num_kv_heads == num_heads, window=None and rope_base=None it
    equals MultiHeadAttention with mask=causal_mask(T) and the same parameters.

    The options of today's open models (keyword-only; the defaults are the plain layer):

    - `qk_norm`: RMSNorm (eps `norm_eps`) of each head's queries and keys over head_size,
      before the rotation, with gains `q_norm.gamma`, `k_norm.gamma` (head_size,) shared by
      the heads: Qwen3's per-head variant (also Gemma 3's). OLMo 2 normalizes the whole
      projection instead, over num_heads * head_size (its gains (num_hiddens,) and
      (num_kv_heads * head_size,)), before splitting the heads: the same only with one head.
    - `sinks`: `sinks` (num_heads,), one learned logit per head that joins every row's softmax
      and is dropped (gpt-oss; DotProductAttention's `sinks`).
    - `output_gate`: `W_gate` (num_hiddens, num_heads * head_size); each head's output is
      multiplied by sigmoid(X W_gate) (its columns of it) before W_o (Qwen3-Next's gated
      attention; Qwen3-Next stores the gate in q_proj, head by head after each head's query).
    - `logit_cap`: scores become cap * tanh(scores / cap) before the mask (Gemma 2).
    - `rope_fraction`: only the first rope_fraction * head_size features of each head (an
      even number) are rotated, with the frequencies of that many features, the rest pass
      unrotated (GPT-NeoX, Qwen3-Next's 0.25).
    - `rope_scaling`: RotaryPositionalEncoding's `scaling` (llama3 or yarn).
    - `attention_bias`: biases b_q, b_k, b_v on the projections, none on W_o (Qwen2).
    """

    def __init__(self, num_hiddens, num_heads, *, num_kv_heads=None, head_size=None, window=None,
                 rope_base=10000.0, dropout=0.0, bias=False, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, norm_eps=1e-6):
        """num_kv_heads must divide num_heads; head_size None or a positive integer (even with
        rotary positions); window >= 1 or None; logit_cap None or > 0; rope_fraction in (0, 1]
        leaving an even count of rotated features."""

    def __call__(self, X, *, cache=None, training=None):
        """X (b, T, num_hiddens) -> (Y (b, T, num_hiddens), cache).

        `cache`: None at the start, or what the previous call returned: a tuple (keys,
        values) of native arrays (b, num_kv_heads, t, head_size) holding the rotated keys and
        the values of every position so far; the positions of X continue after them. Feeding
        a sequence in pieces of any sizes gives the outputs of one full pass.
        `.attention_weights` (b, num_heads, T, t + T).

        With a `window` w the cache is a rolling buffer (keys, values, position): the last
        max(w - 1, 1) positions' keys and values (b, num_kv_heads, max(w - 1, 1), head_size),
        oldest first, zeros before position 0 (masked), and `position`, the number of positions
        seen (an int; an int32 scalar of the framework inside generate's compiled steps). Its
        size never grows, and the outputs are those of the unbounded cache; called with a cache,
        `.attention_weights` (b, num_heads, T, max(w - 1, 1) + T)."""


class TransformerLM:
    """A decoder-only language model: `embedding` (vocab_size, num_hiddens); `num_layers`
    pre-norm blocks `blocks.{i}`, each X = X + attention(norm1(X)), then X = X + ffn(norm2(X)),
    with norm1, norm2 RMSNorm(eps=norm_eps), attention a CausalSelfAttention (num_kv_heads,
    head_size, window, rope_base, norm_eps (its qk_norm's) and the open-model options qk_norm, sinks,
    output_gate, logit_cap, rope_fraction, rope_scaling, attention_bias passed on) and ffn a
    SwiGLUFFN(num_hiddens, ffn_num_hiddens); a final `norm` (RMSNorm(eps=norm_eps)) and W_out
    (num_hiddens, vocab_size), or with tie_embeddings=True the embedding's transpose (one
    parameter, as GPT-2, Gemma and the small LLaMA 3.2s have). `final_logit_cap` c: the logits
    become c * tanh(logits / c) (Gemma 2's soft-capping). Gemma 3's block: post_norms=True adds
    RMSNorms `post_norm1`, `post_norm2` on the attention's and the FFN's outputs before each is
    added, scale_embeddings=True multiplies the embeddings by sqrt(num_hiddens), and
    ffn_activation="gelu_tanh" makes the FFN a GeGLU."""

    def __init__(self, vocab_size, num_hiddens, num_heads, num_layers, ffn_num_hiddens, *,
                 num_kv_heads=None, head_size=None, window=None, rope_base=10000.0, dropout=0.0, norm_eps=1e-6,
                 tie_embeddings=False, final_logit_cap=None, qk_norm=False, sinks=False, output_gate=False,
                 logit_cap=None, rope_fraction=1.0, rope_scaling=None, attention_bias=False, post_norms=False,
                 scale_embeddings=False, ffn_activation="silu", attention="mha", mla=None, gated_deltanet=None):
        """Parameter names follow the children: embedding, blocks.0.attention.W_q,
        blocks.0.ffn.W_gate, blocks.0.norm1.gamma, ..., norm.gamma, W_out (absent when tied).
        `window` and `rope_base` may be one value for every layer or a list or tuple of one per
        layer (window None: global; rope_base None: no rotary positions, NoPE), so Gemma 3's five
        local layers per global one is window=[1024] * 5 + [None]; final_logit_cap > 0 or None.
        `attention`, one value or one per layer: "mha" for a CausalSelfAttention (multi-head, or
        grouped-query with num_kv_heads), "mla" for a MultiHeadLatentAttention(num_hiddens,
        num_heads, rope_base=that layer's, dropout=dropout, **mla), `mla` a dict of its sizes
        (kv_lora_rank, qk_nope_head_size, qk_rope_head_size, v_head_size, and q_lora_rank,
        norm_eps, absorb as it takes them), and "gated_deltanet" for a GatedDeltaNet(num_hiddens,
        num_heads, norm_eps=norm_eps, **gated_deltanet), `gated_deltanet` a dict of its sizes
        (num_heads, head_size, value_head_size, conv_size, norm_eps, chunk_size; {} for its
        defaults), its parameters GatedDeltaNet's own (blocks.0.attention.conv, .A_log, ...); so
        Qwen3-Next's three linear layers per full one is attention=["gated_deltanet"] * 3 + ["mha"].
        window, num_kv_heads, head_size (each head's width: None for num_hiddens // num_heads;
        Qwen3-0.6B's heads are 128 wide at num_hiddens 1024 and 16 heads) and the open-model
        options are CausalSelfAttention's and leave "mla" and "gated_deltanet" layers alone (a
        "gated_deltanet" layer has no positions: rope_base does not reach it either)."""

    def __call__(self, tokens, *, cache=None, training=None):
        """tokens int (b, T) -> (logits (b, T, vocab_size), cache); `cache` is None or what the
        previous call returned (a list with one cache per block: a windowed block's is its rolling
        buffer, of constant size; an "mla" block's its (latents, rotary keys); a "gated_deltanet"
        block's its state (conv, S), (b, conv_size - 1, channels) and (b, num_heads, head_size,
        value_head_size), of constant size: generate carries it, not keys and values)."""

    # `config`: the dict of the arguments the model was made with (what save_pretrained writes).


def generate(model, prompt, num_tokens, *, use_cache=True, temperature=0.0, seed=0):
    """prompt int (b, T0) (array-like) -> NumPy int (b, T0 + num_tokens): the prompt followed by
    the new tokens. Greedy at temperature 0; otherwise sampled from softmax(logits /
    temperature) with numpy.random.default_rng(seed), so the same logits give the same tokens
    on every backend. use_cache=False recomputes the whole sequence at every step and gives
    the same tokens."""


def from_pretrained(path, *, dtype="float32"):
    """A ready TransformerLM with the weights of a Hugging Face model directory on disk
    (config.json, and model.safetensors or the shards model.safetensors.index.json lists, float32,
    float16 or bfloat16): LLaMA 2 and 3.x (llama3 RoPE scaling, tied or untied), Mistral, Qwen2,
    Qwen3 and Gemma 3 (text). `d2lattn.hub` maps config.json to TransformerLM's arguments and transformers' tensor
    names to the canonical ones; what TransformerLM cannot express (a mixture of experts, an
    unknown rope_type, Gemma's query_pre_attn_scalar other than head_dim, ...) is a ValueError
    naming the config field. A path only: nothing is downloaded. `dtype`: "float32". config.json's
    head_dim is TransformerLM's head_size (None where it is hidden_size / num_attention_heads)."""


def save_pretrained(model, path, *, family="llama"):
    """Write `model` (a TransformerLM) as a Hugging Face directory, config.json and
    model.safetensors, that transformers' AutoModelForCausalLM.from_pretrained opens with the same
    logits; `family` ("llama", "mistral", "qwen2", "qwen3", "gemma3_text") picks the architecture, and what it
    cannot express of the model (Mistral with per-layer windows, QK-norm outside Qwen3, ...) is a
    ValueError naming the argument."""


# --- shrinking the cache ------------------------------------------------------------


class MultiHeadLatentAttention:
    """Multi-head latent attention (DeepSeek-V2/V3): the cache holds one latent c_kv
    (kv_lora_rank) and one rotary key (qk_rope_head_size) per token, shared by every head.

    Queries: X W_q, or with `q_lora_rank` RMSNorm(X W_dq) W_uq (the norm's gamma `q_norm.gamma`);
    head i owns columns i*(dn + dr):(i+1)*(dn + dr), its qk_nope_head_size (dn) features first, then
    its qk_rope_head_size (dr) rotary ones. Latent c = RMSNorm(X W_dkv) (`kv_norm.gamma`); head i's
    keys are c W_uk[:, i*dn:(i+1)*dn] and values c W_uv[:, i*dv:(i+1)*dv]; the rotary key is
    X W_kr, rotated once for all heads (split halves, base `rope_base`; DeepSeek's checkpoints pair
    interleaved features: permute their columns). Scores (q_nope . k_nope + q_rope . k_rope) /
    sqrt(dn + dr), causal; output heads concatenated, then W_o. No biases.

    absorb=False decompresses every cached latent into each head's keys and values; absorb=True
    folds W_uk into the queries and W_uv into the output and attends over the latents themselves,
    reading kv_lora_rank + qk_rope_head_size numbers per cached token. Both give the same outputs."""

    def __init__(self, num_hiddens, num_heads, *, kv_lora_rank, q_lora_rank=None, qk_nope_head_size,
                 qk_rope_head_size, v_head_size, rope_base=10000.0, norm_eps=1e-6, dropout=0.0, absorb=False):
        """W_q (num_hiddens, heads * (dn + dr)), or W_dq (num_hiddens, q_lora_rank), q_norm.gamma,
        W_uq (q_lora_rank, heads * (dn + dr)); W_dkv (num_hiddens, kv_lora_rank), kv_norm.gamma,
        W_kr (num_hiddens, dr), W_uk (kv_lora_rank, heads * dn), W_uv (kv_lora_rank, heads * dv),
        W_o (heads * dv, num_hiddens). A rank above what it factors (min(in, out) of its map)
        or an odd qk_rope_head_size is a ValueError naming it."""

    def __call__(self, X, *, cache=None, training=None):
        """X (b, T, num_hiddens) -> (Y (b, T, num_hiddens), cache), with CausalSelfAttention's protocol:
        `cache` None or the previous call's (latents (b, t, kv_lora_rank), rotary keys (b, t, dr)), native
        arrays; X's positions continue after them. `.attention_weights` (b, num_heads, T, t + T)."""
# --- transformers for vision ---------------------------------------------------------
# Images are channels-last (b, H, W, C) on every backend. Sizes (`image_size`, `patch_size`)
# are an integer (square) or a (height, width) pair. The GELU is the exact one,
# x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))) (PyTorch's and Keras' default; not the tanh
# approximation, JAX's default), the same on every backend.


class PatchEmbedding:
    """Non-overlapping patch_size patches, each flattened and mapped by one dense map
    (equivalently a convolution with kernel and stride patch_size).

    Patches are taken in row-major order over the grid (left to right, then top to bottom);
    a patch flattens to P_h * P_w * C features in the order (row, column, channel), channels
    innermost: feature (i * P_w + j) * C + c is pixel (i, j), channel c of the patch. So the
    dense map W_patch (P_h * P_w * C, num_hiddens) is a convolution kernel (P_h, P_w, C,
    num_hiddens) reshaped."""

    def __init__(self, image_size, patch_size, num_channels, num_hiddens):
        """W_patch (P_h * P_w * num_channels, num_hiddens), b_patch (num_hiddens,). A patch_size that
        does not divide image_size is a ValueError naming patch_size. `.num_patches`."""

    def __call__(self, X, *, training=None):
        """X (b, H, W, num_channels) -> (b, num_patches, num_hiddens); any other image shape or
        channel count is a ValueError."""


class ViTBlock:
    """A pre-norm encoder block: X + MHA(norm1(X)), then X + mlp(norm2(X)), where mlp is
    W_1, GELU, dropout, W_2, dropout (with biases b_1, b_2). Dropout (training only) on the
    attention weights and in the MLP, as d2l's.
    Children: norm1, attention (MultiHeadAttention(num_hiddens, num_heads, dropout, bias)), norm2,
    mlp (mlp.W_1 (num_hiddens, mlp_num_hiddens), mlp.b_1, mlp.W_2, mlp.b_2)."""

    def __init__(self, num_hiddens, mlp_num_hiddens, num_heads, dropout=0.0, bias=False):
        """`bias`: biases of the attention's maps (the MLP always has them)."""

    def __call__(self, X, valid_lens=None, *, training=None):
        """(b, T, num_hiddens) -> same shape; `.attention_weights` (b, heads, T, T)."""


class ViT:
    """The Vision Transformer: patch_embedding, a learned cls_token (1, 1, num_hiddens) prepended to
    the patches, learned pos_embedding (1, num_patches + 1, num_hiddens) added, dropout, the blocks
    `blocks.{i}` (ViTBlock), a final `norm` (LayerNorm) and a dense head W_head (num_hiddens,
    num_classes), b_head on the class token's output."""

    def __init__(self, image_size, patch_size, num_channels, num_hiddens, mlp_num_hiddens, num_heads, num_blocks,
                 num_classes, dropout=0.0, bias=False):
        """Sizes as PatchEmbedding and ViTBlock."""

    def __call__(self, images, *, training=None):
        """images (b, H, W, num_channels) -> logits (b, num_classes); `.attention_weights` a list,
        one (b, heads, num_patches + 1, num_patches + 1) per block (row 0: the class token's)."""


def train_classifier(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """The framework's own Adam with global-norm clipping on the mean softmax cross-entropy of
    model(images, training=True), a progress bar, and the loss curve (each epoch's mean loss).
    batches: a re-iterable of NumPy (images float (b, H, W, C), labels int (b,))."""


# --- attention that fits in memory ---------------------------------------------------


def blockwise_attention(queries, keys, values, valid_lens=None, *, causal=False, offset=0, block_size=128,
                        return_lse=False):
    """Scaled dot-product attention computed `block_size` keys at a time with a running max
    and sum (the online softmax): extra memory O(q * block_size), never O(q * k).

    (..., q, d), (..., k, d), (..., k, dv) -> (..., q, dv), any leading axes ((b,) or
    (b, heads)); `valid_lens` ((b,) or (b, q)) indexes the first. causal=True applies
    causal_mask(q, k, offset=offset). A row with nothing to attend to is zeros. With
    return_lse=True also the log-sum-exp of each row's kept scaled scores, (..., q), -inf
    for an empty row. Gradients recompute the scores block by block from the saved output
    and log-sum-exp (FlashAttention-2's backward), so training memory is O(T) too."""


def merge_attention(outputs, lses):
    """Combine partial results over disjoint sets of keys: sequences of (..., q, dv) outputs
    and (..., q) log-sum-exps -> (output, lse), each part weighted by exp(lse_i - lse);
    a row empty in every part stays zeros with lse = -inf."""


# --- a state of constant size: linear attention and the gated delta rule -------------


def linear_attention(queries, keys, values, *, causal=True, feature_map="elu1", chunk_size=64, state=None,
                     return_state=False, form="chunked"):
    """Normalised linear attention (Katharopoulos et al. 2020): softmax(q.k) becomes phi(q).phi(k), so
    o_i = phi(q_i)^T S_i / phi(q_i)^T z_i with S_i = sum_{j<=i} phi(k_j) v_j^T (..., d_k, d_v) and
    z_i = sum_{j<=i} phi(k_j) (..., d_k); a query whose normaliser is 0 (relu only) reads zeros.

    (..., T, d_k), (..., T, d_k), (..., T, d_v) -> (..., T, d_v), any leading axes. feature_map:
    "elu1" (elu(x) + 1) or "relu". `form` picks one of three computations that give the same numbers:
    "parallel" (the masked quadratic form, O(T^2)), "recurrent" (the RNN, one position at a time, O(T)
    steps) or "chunked" (parallel within chunks of `chunk_size`, recurrent across them; the default).
    `state`: None (zeros) or the (S, z) a previous call returned with return_state=True, which then
    returns (output, (S, z)); feeding a sequence in pieces with the state passed on gives the outputs
    of one full pass, so generation costs O(1) per token. causal=False: every query reads every key
    (any number of keys), whatever the form."""


def gated_delta_rule(queries, keys, values, alpha, beta, *, chunk_size=64, state=None, return_state=False,
                     form="chunked"):
    """The gated delta rule (Gated DeltaNet, Yang et al. 2025) as Qwen3-Next computes it: keys and
    queries L2-normalised over their features (x / sqrt(|x|^2 + 1e-6)), queries then scaled by
    1/sqrt(d_k); with the state S (..., d_k, d_v), per position
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T q_t
    (S is the transpose of the paper's (d_v, d_k) matrix: a query reads q^T S, as in linear attention).

    queries, keys (..., T, d_k), values (..., T, d_v), alpha in (0, 1] and beta (..., T) ->
    (..., T, d_v). `form`: "recurrent" (one position at a time) or "chunked" (the WY/UT form: a
    lower-triangular solve within each chunk of `chunk_size`, the state across chunks; the default).
    `state`: None (zeros) or the S a previous call returned with return_state=True, which then
    returns (output, S). transformers' torch_recurrent_gated_delta_rule and torch_chunk_gated_delta_rule
    with use_qk_l2norm_in_kernel=True compute the same with g = log(alpha), in layout (b, T, h, d)."""


class GatedDeltaNet:
    """Qwen3-Next's linear-attention layer (one key head per value head): W_q, W_k (num_hiddens,
    num_heads * head_size), W_v, W_z (num_hiddens, num_heads * value_head_size), W_b, W_a (num_hiddens,
    num_heads); a causal depthwise convolution `conv` (conv_size, channels) over the concatenated
    q, k, v (channels = 2 * num_heads * head_size + num_heads * value_head_size), then SiLU;
    beta = sigmoid(X W_b), alpha = exp(-exp(A_log) * softplus(X W_a + dt_bias)) (A_log, dt_bias
    (num_heads,)); gated_delta_rule per head; an RMSNorm of each head's output (gamma (value_head_size,))
    times SiLU(X W_z); W_o (num_heads * value_head_size, num_hiddens). No biases."""

    def __init__(self, num_hiddens, num_heads, *, head_size=None, value_head_size=None, conv_size=4,
                 norm_eps=1e-6, chunk_size=64):
        """head_size defaults to num_hiddens // num_heads, value_head_size to head_size."""

    def __call__(self, X, *, cache=None, training=None):
        """X (b, T, num_hiddens) -> (Y (b, T, num_hiddens), cache). `cache`: None at the start or
        what the previous call returned, (conv, S): the convolution's last conv_size - 1 inputs
        (b, conv_size - 1, channels) and the delta rule's state (b, num_heads, head_size, value_head_size);
        its size does not grow with the sequence. Pieces with the cache passed on give one full pass."""


def flex_attention(queries, keys, values, *, score_mod=None, mask_mod=None, block_size=128, return_lse=False):
    """Attention with a programmable score and mask, one tile of `block_size` queries by
    `block_size` keys at a time (the online softmax), skipping the tiles the mask empties.

    (..., q, d), (..., k, d), (..., k, dv) -> (..., q, dv) (and with return_lse=True the
    (..., q) log-sum-exp, -inf for an empty row). The scaled scores s = q k^T / sqrt(d) of a tile
    become score_mod(s, b, h, q_idx, kv_idx); then keys where mask_mod(b, h, q_idx, kv_idx) is
    False are dropped. b, h, q_idx and kv_idx are int32 arrays of the batch index, the head index
    (axis 1 of 4-d inputs; 0 for 3-d), the query and the key positions, shaped to broadcast
    against the tile's scores, so a mod is written once with the backend's arithmetic (and
    `where`, `take`) and runs on every backend. `mask_mod` may also be a BlockMask from
    `block_mask` (reused across calls). Empty tiles are computed neither forward nor backward,
    full tiles skip the mask. Gradients recompute each tile from the saved output and
    log-sum-exp, as blockwise_attention's do; arrays a score_mod closes over are constants."""


def block_mask(mask_mod, num_queries, num_keys, block_size=128, *, batch_size=1, num_heads=1):
    """A BlockMask (d2lattn/_tiles.py, plain NumPy, the same on every backend): `kinds`
    (query blocks, key blocks), each tile EMPTY (0), PARTIAL (1) or FULL (2) for mask_mod
    evaluated over `batch_size` x `num_heads` (1: the mask does not depend on that index),
    `fraction` of the tiles computed, and the sizes; flex_attention's `mask_mod` takes it."""


def causal_mod(offset=0):
    """mask_mod: query i sits at offset + i; keep key j <= offset + i (causal_mask's rule)."""


def window_mod(window, offset=0):
    """mask_mod: causal_mod(offset) and offset + i - j < window (the window counts the query)."""


def document_mod(document_ids):
    """mask_mod for packed sequences: keep keys of the query's own document; document_ids
    (k,) or (b, k) integers, one per position (queries and keys share positions)."""


def prefix_lm_mod(prefix_length):
    """mask_mod: every query sees the first `prefix_length` keys, and causally the rest."""


def and_mods(*mask_mods):
    """mask_mod: kept where every one keeps."""


def or_mods(*mask_mods):
    """mask_mod: kept where any one keeps."""


def alibi_mod(num_heads, offset=0):
    """score_mod: score - alibi_slopes(num_heads)[h] * |offset + i - j| (as alibi_bias)."""


def softcap_mod(cap):
    """score_mod: cap * tanh(score / cap) (Gemma 2's logit soft-capping)."""


def relative_bias_mod(table):
    """score_mod: score + table[h, clip(j - i, -D, D) + D], table (heads, 2 D + 1): a learned
    bias per head and clipped relative distance (T5-style, without buckets)."""


# --- portable parameters --------------------------------------------------------


def get_params(module):
    """{canonical name: np.ndarray}; dense maps are y = x @ W + b, W (in, out)."""


def set_params(module, params):
    """Load canonical parameters; a missing, extra or mis-shaped entry is a ValueError."""


def save_params(module, path):
    """Write get_params(module) to a .safetensors file (float32, canonical names)."""


def load_params(module, path):
    """Load a .safetensors file written by any backend; strict like set_params."""


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """Output and gradients of sum(fn(*inputs, **kwargs) * projection), all NumPy.

    `compiled=True` runs forward and backward the way the framework compiles
    (jax.jit, tf.function, hybridized Gluon, torch.compile); NumPy has no
    compiler, so there it is the same computation.

    Returns (output, [d/d input for each input], {canonical name: d/d param})
    for a module's parameters (empty for a plain function). The NumPy
    reference answers with float64 central finite differences.
    """


# --- figures and notebooks -----------------------------------------------------------


def show_heatmaps(matrices, xlabel, ylabel, titles=None, figsize=(2.5, 2.5), cmap="Reds"):
    """Heatmaps of a (rows, cols, q, k) array-like, one figure; returns the figure."""


def show_source(obj):
    """Show the active backend's source of a component (a notebook sees it highlighted)."""


def check_shape(x, shape):
    """Raise AssertionError unless `x.shape` is `shape`; returns `x`."""


__all__ = [name for name in dir() if not name.startswith("_")]
