"""The one list of harness cases every backend runs.

A case names an API component, its constructor arguments, the shapes of its
float inputs (and of any integer token inputs), and how attention is restricted
(`valid_lens` given literally, `mask` by kind). All numbers come from a NumPy generator seeded by `seed`, so
every backend sees the same inputs and the same parameters. A module that returns a cache
(`CausalSelfAttention`, `MultiHeadLatentAttention`, `GatedDeltaNet`, `TransformerLM`) is checked on its output and every
array of the cache.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    component: str
    inputs: tuple                     # shapes of the float inputs, in call order
    args: dict = field(default_factory=dict)
    valid_lens: tuple | None = None   # literal lengths: (b,) or (b, q)
    mask: str | None = None           # None, "causal" (q, k) or "random" (b, q, k)
    seed: int = 0
    tokens: tuple = ()                # integer inputs, passed by name: ((name, shape, vocab size), ...)
    lens_arg: str = "valid_lens"      # the name the lengths are passed by
    keywords: tuple = ()              # names the last float inputs are passed by (differentiated like the rest);
                                      # a name given more than once takes a tuple of them (a state (S, z))
    positive: tuple = ()              # indices of float inputs drawn from U(0.2, 0.95), not N(0, 1): decays, gates
    bias: str | None = None           # "alibi": the score_bias input holds alibi_bias(heads, q, k), not noise
    call: dict = field(default_factory=dict)  # fixed keyword arguments of the call (e.g. a RoPE offset)
    pieces: tuple = ()                # a cached module fed its sequence in pieces of these sizes, cache passed on


@dataclass(frozen=True)
class Mod:
    """A ready-made score_mod or mask_mod of the backend under test: getattr(d2l, name)(*args), a Mod
    among the args built first (tests/harness.py builds it), so the same case runs on every backend."""
    name: str
    args: tuple = ()


B, Q, K, D, DV = 2, 3, 4, 6, 5
QKV = ((B, Q, D), (B, K, D), (B, K, DV))
CROSS = ((B, Q, 3), (B, K, 7), (B, K, DV))   # distinct query, key and value sizes
QKV7 = ((B, Q, 4), (B, 7, 4), (B, 7, DV))     # blockwise: 7 keys, in blocks that need not divide them
HEADS7 = ((B, 2, Q, 4), (B, 2, 7, 4), (B, 2, 7, DV))
LIN7 = ((B, 2, 7, 4), (B, 2, 7, 4), (B, 2, 7, DV))  # linear attention: 7 positions, chunks need not divide them
DELTA7 = LIN7 + ((B, 2, 7), (B, 2, 7))              # ... and the gated delta rule's alpha and beta
STATE = ((B, 2, 4, DV), (B, 2, 4))                  # linear attention's state (S, z)
# multi-head latent attention: a latent of 4 for 2 heads of 3 + 2 query-key and 3 value features
MLA = {"num_hiddens": 8, "num_heads": 2, "kv_lora_rank": 4, "qk_nope_head_size": 3, "qk_rope_head_size": 2,
       "v_head_size": 3}
SELF7 = ((B, 2, 7, 4), (B, 2, 7, 4), (B, 2, 7, DV))  # flex: 7 queries and 7 keys, tiles that need not divide them
DOCS = ((0, 0, 0, 1, 1, 2, 2), (0, 1, 1, 1, 1, 1, 1))  # per-token document ids of each sequence (packed)
# RoPE scalings whose bands fall inside a head of 8 at base 100 (wavelengths 6.3, 20, 63, 200)
LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 128}
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
CONCAT = {"query_size": 3, "key_size": 4, "num_values": 5, "value_size": 2, "output_size": 6}

CASES = [
    # masked_softmax over (b, q, k) scores
    Case("softmax-plain", "masked_softmax", ((B, Q, K),)),
    Case("softmax-lens1d", "masked_softmax", ((B, Q, K),), valid_lens=(2, 0)),
    Case("softmax-lens1d-long", "masked_softmax", ((B, Q, K),), valid_lens=(9, 3)),
    Case("softmax-lens2d", "masked_softmax", ((B, Q, K),), valid_lens=((1, 0, 9), (2, 3, 4))),
    Case("softmax-mask", "masked_softmax", ((B, Q, K),), mask="random", seed=1),
    Case("softmax-causal", "masked_softmax", ((B, Q, K),), mask="causal"),
    Case("softmax-lens-and-mask", "masked_softmax", ((B, Q, K),), valid_lens=(3, 1), mask="random", seed=2),
    Case("softmax-4d-heads", "masked_softmax", ((B, 2, Q, K),), valid_lens=((1, 0, 9), (2, 3, 4))),
    # scaled dot-product attention
    Case("dot-plain", "DotProductAttention", QKV),
    Case("dot-lens1d", "DotProductAttention", QKV, valid_lens=(2, 0)),
    Case("dot-lens2d", "DotProductAttention", QKV, valid_lens=((1, 0, 9), (2, 3, 4))),
    Case("dot-mask", "DotProductAttention", QKV, mask="random", seed=3),
    Case("dot-causal", "DotProductAttention", QKV, mask="causal"),
    # additive attention
    Case("additive-plain", "AdditiveAttention", CROSS, {"query_size": 3, "key_size": 7, "num_hiddens": 8}),
    Case("additive-lens1d", "AdditiveAttention", CROSS, {"query_size": 3, "key_size": 7, "num_hiddens": 8},
         valid_lens=(3, 0)),
    Case("additive-lens2d-mask", "AdditiveAttention", CROSS, {"query_size": 3, "key_size": 7, "num_hiddens": 8},
         valid_lens=((4, 1, 0), (2, 9, 3)), mask="random", seed=4),
    # multi-head attention
    Case("mha-self", "MultiHeadAttention", ((B, K, 8),) * 3, {"num_hiddens": 8, "num_heads": 2}),
    Case("mha-lens1d-bias", "MultiHeadAttention", ((B, K, 8),) * 3, {"num_hiddens": 8, "num_heads": 2, "bias": True},
         valid_lens=(3, 0)),
    Case("mha-causal", "MultiHeadAttention", ((B, K, 8),) * 3, {"num_hiddens": 8, "num_heads": 4}, mask="causal"),
    Case("mha-cross-lens2d", "MultiHeadAttention", CROSS,
         {"num_hiddens": 6, "num_heads": 3, "bias": True, "query_size": 3, "key_size": 7, "value_size": 5},
         valid_lens=((1, 0, 9), (2, 3, 4))),
    Case("mha-cross-mask", "MultiHeadAttention", CROSS,
         {"num_hiddens": 6, "num_heads": 2, "query_size": 3, "key_size": 7, "value_size": 5},
         valid_lens=(4, 2), mask="random", seed=5),
    # positional encoding
    Case("posenc-even", "PositionalEncoding", ((B, 7, 8),), {"num_hiddens": 8, "max_len": 50}),
    Case("posenc-odd", "PositionalEncoding", ((B, 5, 7),), {"num_hiddens": 7, "max_len": 20}),
    # the seed's concat rule: one key per query, weights over num_values fixed slots
    Case("concat-plain", "ConcatAttention", ((B, Q, 3), (B, Q, 4), (B, 5, 2)), CONCAT),
    Case("concat-lens2d", "ConcatAttention", ((B, Q, 3), (B, Q, 4), (B, 5, 2)), CONCAT,
         valid_lens=((1, 0, 9), (2, 5, 4))),
    # transformer blocks
    Case("layernorm", "LayerNorm", ((B, Q, 6),), {"normalized_size": 6}),
    Case("ffn", "PositionWiseFFN", ((B, Q, 4),), {"num_inputs": 4, "ffn_num_hiddens": 8, "ffn_num_outputs": 5}),
    Case("addnorm", "AddNorm", ((B, Q, 6), (B, Q, 6)), {"normalized_size": 6}),
    Case("encoder-block", "TransformerEncoderBlock", ((B, K, 8),),
         {"num_hiddens": 8, "ffn_num_hiddens": 12, "num_heads": 2}, valid_lens=(3, 1)),
    Case("encoder-block-bias", "TransformerEncoderBlock", ((B, K, 8),),
         {"num_hiddens": 8, "ffn_num_hiddens": 6, "num_heads": 4, "bias": True}),
    Case("decoder-block", "TransformerDecoderBlock", ((B, Q, 8), (B, K, 8)),
         {"num_hiddens": 8, "ffn_num_hiddens": 12, "num_heads": 2}, valid_lens=(4, 2), lens_arg="enc_valid_lens"),
    # sequence to sequence
    Case("gru-zero-state", "GRU", ((B, 4, 3),), {"input_size": 3, "num_hiddens": 4}),
    Case("gru-2layers-state", "GRU", ((B, 3, 3), (2, B, 4)), {"input_size": 3, "num_hiddens": 4, "num_layers": 2},
         seed=6),
    Case("seq-loss", "sequence_loss", ((B, 3, 5),), tokens=(("labels", (B, 3), 5),), valid_lens=(1, 9), seed=7),
    Case("seq2seq-encoder", "Seq2SeqEncoder", (), {"vocab_size": 6, "embed_size": 3, "num_hiddens": 4},
         tokens=(("X", (B, 4), 6),), seed=8),
    Case("seq2seq-lens", "Seq2Seq", (), {"src_vocab_size": 6, "tgt_vocab_size": 5, "embed_size": 3, "num_hiddens": 4},
         tokens=(("src", (B, 4), 6), ("tgt", (B, 3), 5)), valid_lens=(2, 9), lens_arg="src_valid_lens", seed=9),
    Case("seq2seq-2layers", "Seq2Seq", (),
         {"src_vocab_size": 4, "tgt_vocab_size": 5, "embed_size": 2, "num_hiddens": 3, "num_layers": 2},
         tokens=(("src", (B, 3), 4), ("tgt", (B, 3), 5)), valid_lens=(1, 3), lens_arg="src_valid_lens", seed=10),
    # score bias: added to the scaled scores before masking, differentiated as an input
    Case("dot-bias", "DotProductAttention", QKV + ((B, Q, K),), keywords=("score_bias",), seed=11),
    Case("dot-bias-broadcast-lens-mask", "DotProductAttention", QKV + ((Q, K),), keywords=("score_bias",),
         valid_lens=(3, 1), mask="random", seed=12),
    Case("mha-bias-lens1d", "MultiHeadAttention", ((B, K, 8),) * 3 + ((B, 2, K, K),),
         {"num_hiddens": 8, "num_heads": 2}, keywords=("score_bias",), valid_lens=(3, 0), seed=13),
    Case("mha-alibi-causal", "MultiHeadAttention", ((B, K, 8),) * 3 + ((4, K, K),), {"num_hiddens": 8, "num_heads": 4},
         keywords=("score_bias",), bias="alibi", mask="causal", seed=14),
    # rotary positions: split halves and interleaved, at offsets
    Case("rope-halves", "RotaryPositionalEncoding", ((B, 2, 5, 6),), {"head_size": 6}, seed=15),
    Case("rope-halves-offset", "RotaryPositionalEncoding", ((B, 5, 8),), {"head_size": 8, "base": 100.0},
         call={"offset": 7}, seed=16),
    Case("rope-interleaved", "RotaryPositionalEncoding", ((B, 5, 8),), {"head_size": 8, "interleaved": True}, seed=17),
    Case("rope-interleaved-offset", "RotaryPositionalEncoding", ((B, 2, 4, 6),),
         {"head_size": 6, "base": 50.0, "interleaved": True}, call={"offset": 3}, seed=18),
    # grouped-query (num_kv_heads divides num_heads) and multi-query (one key/value head) attention
    Case("gqa-lens1d", "MultiHeadAttention", ((B, Q, 8), (B, K, 8), (B, K, 8)),
         {"num_hiddens": 8, "num_heads": 4, "num_kv_heads": 2}, valid_lens=(3, 0), seed=19),
    Case("gqa-cross-lens2d-bias", "MultiHeadAttention", CROSS,
         {"num_hiddens": 12, "num_heads": 6, "num_kv_heads": 3, "bias": True, "query_size": 3, "key_size": 7,
          "value_size": 5}, valid_lens=((1, 0, 9), (2, 3, 4)), seed=20),
    Case("mqa-lens1d-bias", "MultiHeadAttention", ((B, K, 8),) * 3,
         {"num_hiddens": 8, "num_heads": 4, "num_kv_heads": 1, "bias": True}, valid_lens=(2, 4), seed=21),
    Case("mqa-cross-lens2d-mask", "MultiHeadAttention", CROSS,
         {"num_hiddens": 6, "num_heads": 3, "num_kv_heads": 1, "query_size": 3, "key_size": 7, "value_size": 5},
         valid_lens=((2, 0, 9), (1, 3, 4)), mask="random", seed=22),
    Case("gqa-alibi-causal", "MultiHeadAttention", ((B, K, 12),) * 3 + ((6, K, K),),
         {"num_hiddens": 12, "num_heads": 6, "num_kv_heads": 2, "bias": True}, keywords=("score_bias",), bias="alibi",
         mask="causal", seed=23),
    # the blocks of current models
    Case("rmsnorm", "RMSNorm", ((B, Q, 6),), {"normalized_size": 6}, seed=24),
    Case("rmsnorm-eps", "RMSNorm", ((B, Q, 4),), {"normalized_size": 4, "eps": 0.5}, seed=25),
    Case("swiglu", "SwiGLUFFN", ((B, Q, 4),), {"num_inputs": 4, "ffn_num_hiddens": 6}, seed=26),
    Case("swiglu-outputs", "SwiGLUFFN", ((B, Q, 4),), {"num_inputs": 4, "ffn_num_hiddens": 6, "ffn_num_outputs": 5},
         seed=27),
    # causal self-attention: outputs Y and the cache (keys, values)
    Case("csa-window", "CausalSelfAttention", ((B, 6, 8),), {"num_hiddens": 8, "num_heads": 2, "window": 3}, seed=28),
    Case("csa-gqa-bias", "CausalSelfAttention", ((B, 5, 8),),
         {"num_hiddens": 8, "num_heads": 4, "num_kv_heads": 2, "bias": True}, seed=29),
    Case("csa-mqa-rope-base", "CausalSelfAttention", ((B, 5, 8),),
         {"num_hiddens": 8, "num_heads": 2, "num_kv_heads": 1, "rope_base": 100.0}, seed=30),
    Case("csa-no-rope", "CausalSelfAttention", ((B, 5, 8),), {"num_hiddens": 8, "num_heads": 2, "rope_base": None},
         seed=31),
    Case("csa-cache-pieces", "CausalSelfAttention", ((B, 6, 8),),
         {"num_hiddens": 8, "num_heads": 4, "num_kv_heads": 2, "window": 3}, pieces=(3, 1, 2), seed=32),
    # decoder-only language model: logits and the caches of its blocks
    Case("lm", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 12},
         tokens=(("tokens", (B, 5), 7),), seed=33),
    Case("lm-gqa-window-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 6, "num_kv_heads": 2,
          "window": 2}, tokens=(("tokens", (B, 6), 7),), pieces=(3, 1, 2), seed=34),
    # multi-head latent attention: outputs Y and the cache (latents, rotary keys); naive and absorbed
    Case("mla-naive", "MultiHeadLatentAttention", ((B, 5, 8),), {**MLA, "q_lora_rank": 6}, seed=53),
    Case("mla-absorbed", "MultiHeadLatentAttention", ((B, 5, 8),), {**MLA, "q_lora_rank": 6, "absorb": True},
         seed=53),
    Case("mla-absorbed-pieces", "MultiHeadLatentAttention", ((B, 6, 8),),
         {**MLA, "qk_rope_head_size": 4, "rope_base": 100.0, "absorb": True}, pieces=(3, 1, 2), seed=54),
    Case("mla-naive-pieces", "MultiHeadLatentAttention", ((B, 6, 8),), {**MLA, "num_heads": 3, "v_head_size": 2},
         pieces=(2, 4), seed=55),
    Case("lm-mla-mha-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 6,
          "attention": ["mla", "mha"], "mla": {k: v for k, v in MLA.items() if k not in ("num_hiddens", "num_heads")}},
         tokens=(("tokens", (B, 5), 7),), pieces=(3, 2), seed=56),
    # a hybrid stack: GatedDeltaNet blocks, whose caches are their (conv, S) states, before a softmax one
    Case("lm-gdn-mha-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 6,
          "attention": ["gated_deltanet", "mha"], "gated_deltanet": {"conv_size": 3, "chunk_size": 2}},
         tokens=(("tokens", (B, 6), 7),), pieces=(5, 1), seed=57),
    # open-model attention: soft-capping and sinks in the scores (sinks differentiated as an input; a row with
    # nothing to attend to stays zeros), scaled RoPE, and CausalSelfAttention's options, cached in pieces too
    Case("dot-cap-mask", "DotProductAttention", QKV, mask="random", call={"logit_cap": 0.7}, seed=60),
    Case("dot-sinks-mask", "DotProductAttention", QKV + ((B, Q),), keywords=("sinks",), mask="random", seed=61),
    Case("dot-sinks-broadcast-cap-lens", "DotProductAttention", QKV + ((Q,),), keywords=("sinks",), valid_lens=(2, 0),
         call={"logit_cap": 1.5}, seed=62),
    Case("dot-4d-sinks-heads", "DotProductAttention", HEADS7 + ((2, 1),), keywords=("sinks",), valid_lens=(3, 7),
         seed=63),
    Case("rope-llama3", "RotaryPositionalEncoding", ((B, 2, 5, 8),), {"head_size": 8, "base": 100.0, "scaling": LLAMA3},
         call={"offset": 50}, seed=64),
    Case("rope-yarn", "RotaryPositionalEncoding", ((B, 5, 8),), {"head_size": 8, "base": 100.0, "scaling": YARN},
         call={"offset": 20}, seed=65),
    Case("csa-qk-norm-gqa-pieces", "CausalSelfAttention", ((B, 5, 16),),
         {"num_hiddens": 16, "num_heads": 4, "num_kv_heads": 2, "qk_norm": True}, pieces=(2, 3), seed=66),
    Case("csa-sinks-window-pieces", "CausalSelfAttention", ((B, 6, 8),),
         {"num_hiddens": 8, "num_heads": 2, "sinks": True, "window": 2}, pieces=(3, 1, 2), seed=67),
    Case("csa-gate-attention-bias", "CausalSelfAttention", ((B, 5, 8),),
         {"num_hiddens": 8, "num_heads": 2, "output_gate": True, "attention_bias": True}, seed=68),
    Case("csa-cap-pieces", "CausalSelfAttention", ((B, 6, 8),), {"num_hiddens": 8, "num_heads": 2, "logit_cap": 0.5},
         pieces=(4, 2), seed=69),
    Case("csa-partial-rope-yarn-pieces", "CausalSelfAttention", ((B, 5, 16),),
         {"num_hiddens": 16, "num_heads": 2, "rope_fraction": 0.5, "rope_scaling": YARN}, pieces=(2, 2, 1), seed=70),
    Case("csa-nope-sinks-gate", "CausalSelfAttention", ((B, 4, 8),),
         {"num_hiddens": 8, "num_heads": 2, "rope_base": None, "sinks": True, "output_gate": True}, seed=71),
    Case("csa-every-option-pieces", "CausalSelfAttention", ((B, 6, 16),),
         {"num_hiddens": 16, "num_heads": 4, "num_kv_heads": 2, "window": 3, "qk_norm": True, "sinks": True,
          "output_gate": True, "logit_cap": 0.8, "rope_fraction": 0.5, "rope_scaling": LLAMA3, "attention_bias": True},
         pieces=(3, 1, 2), seed=72),
    Case("lm-open-options-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 16, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 12, "qk_norm": True,
          "sinks": True, "output_gate": True, "logit_cap": 1.0, "rope_fraction": 0.5, "rope_scaling": YARN,
          "attention_bias": True}, tokens=(("tokens", (B, 5), 7),), pieces=(3, 2), seed=73),
    # today's open models: a tied head, the final soft-cap, the norms' eps; per-layer windows and bases
    # (None: global, NoPE) and the rolling caches of the windowed layers, fed in pieces
    Case("lm-tied-cap-eps", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 1, "ffn_num_hiddens": 6,
          "tie_embeddings": True, "final_logit_cap": 1.5, "norm_eps": 0.1}, tokens=(("tokens", (B, 5), 7),), seed=35),
    Case("lm-per-layer-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 4,
          "window": [2, None], "rope_base": [100.0, None]}, tokens=(("tokens", (B, 5), 7),), pieces=(2, 1, 2),
         seed=36),
    # Gemma 3's block: post-norms on both branches, GeGLU, embeddings scaled by sqrt(h), QK-norm, a tied head
    Case("geglu", "SwiGLUFFN", ((B, Q, 4),), {"num_inputs": 4, "ffn_num_hiddens": 6, "activation": "gelu_tanh"},
         seed=95),
    Case("lm-gemma-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 6, "qk_norm": True,
          "post_norms": True, "scale_embeddings": True, "ffn_activation": "gelu_tanh", "tie_embeddings": True,
          "window": [2, None], "rope_base": [100.0, 1e4]}, tokens=(("tokens", (B, 5), 7),), pieces=(3, 2), seed=96),
    Case("csa-window1-pieces", "CausalSelfAttention", ((B, 4, 8),), {"num_hiddens": 8, "num_heads": 2, "window": 1},
         pieces=(1, 2, 1), seed=37),
    # heads wider (Qwen3-0.6B: 16 of 128 at 1024) or narrower (gemma-3-1b: 4 of 256 at 1152) than
    # num_hiddens / num_heads: W_q (h, heads * head_size), W_o (heads * head_size, h), scores / sqrt(head_size)
    Case("mha-wide-heads-bias-lens1d", "MultiHeadAttention", ((B, K, 8),) * 3,
         {"num_hiddens": 8, "num_heads": 2, "head_size": 6, "bias": True}, valid_lens=(3, 1), seed=97),
    Case("csa-wide-heads-gqa-pieces", "CausalSelfAttention", ((B, 5, 8),),
         {"num_hiddens": 8, "num_heads": 4, "num_kv_heads": 2, "head_size": 6, "qk_norm": True, "output_gate": True},
         pieces=(2, 3), seed=98),
    Case("csa-narrow-heads-window-pieces", "CausalSelfAttention", ((B, 6, 12),),
         {"num_hiddens": 12, "num_heads": 2, "head_size": 4, "window": 3}, pieces=(3, 1, 2), seed=99),
    Case("lm-head-size-pieces", "TransformerLM", (),
         {"vocab_size": 7, "num_hiddens": 8, "num_heads": 2, "num_layers": 2, "ffn_num_hiddens": 6, "head_size": 6,
          "num_kv_heads": 1, "qk_norm": True, "window": [2, None]}, tokens=(("tokens", (B, 5), 7),), pieces=(3, 2),
         seed=100),
    # the Vision Transformer: channels-last images, patches that need not be square
    Case("patch-embedding", "PatchEmbedding", ((B, 4, 6, 2),),
         {"image_size": (4, 6), "patch_size": (2, 3), "num_channels": 2, "num_hiddens": 5}, seed=80),
    Case("vit-block", "ViTBlock", ((B, 5, 8),), {"num_hiddens": 8, "mlp_num_hiddens": 12, "num_heads": 2}, seed=81),
    Case("vit-block-bias-lens", "ViTBlock", ((B, 5, 8),),
         {"num_hiddens": 8, "mlp_num_hiddens": 6, "num_heads": 4, "bias": True}, valid_lens=(3, 9), seed=82),
    Case("vit", "ViT", ((B, 4, 4, 1),), {"image_size": 4, "patch_size": 2, "num_channels": 1, "num_hiddens": 8,
                                        "mlp_num_hiddens": 12, "num_heads": 2, "num_blocks": 2, "num_classes": 3},
         seed=83),
    # blockwise (online-softmax) attention: key blocks that do not divide k = 7, lengths, causal offsets
    Case("blockwise-plain", "blockwise_attention", QKV7, call={"block_size": 3}, seed=40),
    Case("blockwise-lens1d", "blockwise_attention", QKV7, valid_lens=(9, 0), call={"block_size": 2}, seed=41),
    Case("blockwise-lens2d", "blockwise_attention", QKV7, valid_lens=((1, 0, 9), (2, 7, 4)), call={"block_size": 4},
         seed=42),
    Case("blockwise-causal", "blockwise_attention", QKV7, call={"causal": True, "block_size": 2}, seed=43),
    Case("blockwise-causal-offset-lse", "blockwise_attention", QKV7,
         call={"causal": True, "offset": 4, "block_size": 3, "return_lse": True}, seed=44),
    Case("blockwise-causal-negative-lens2d", "blockwise_attention", QKV7, valid_lens=((7, 2, 9), (0, 5, 6)),
         call={"causal": True, "offset": -2, "block_size": 3}, seed=45),
    Case("blockwise-4d-heads", "blockwise_attention", HEADS7, valid_lens=(3, 1),
         call={"causal": True, "offset": 1, "block_size": 2}, seed=46),
    Case("blockwise-4d-lse-lens2d", "blockwise_attention", HEADS7, valid_lens=((1, 2, 9), (5, 7, 3)),
         call={"block_size": 5, "return_lse": True}, seed=47),
    Case("blockwise-block1", "blockwise_attention", QKV7, valid_lens=(5, 3), call={"block_size": 1}, seed=48),
    Case("blockwise-one-block", "blockwise_attention", QKV7, call={"causal": True, "return_lse": True}, seed=49),
    Case("blockwise-empty-rows-lse", "blockwise_attention", QKV7, valid_lens=(0, 6),
         call={"causal": True, "offset": -1, "block_size": 4, "return_lse": True}, seed=52),
    # flex attention: ready-made mask and score mods, tiles skipped, partial and full
    Case("flex-plain", "flex_attention", SELF7, call={"block_size": 3}, seed=60),
    Case("flex-causal", "flex_attention", SELF7, call={"mask_mod": Mod("causal_mod"), "block_size": 3}, seed=61),
    Case("flex-window-lse", "flex_attention", SELF7,
         call={"mask_mod": Mod("window_mod", (3,)), "block_size": 2, "return_lse": True}, seed=62),
    Case("flex-document-causal", "flex_attention", SELF7,
         call={"mask_mod": Mod("and_mods", (Mod("document_mod", (DOCS,)), Mod("causal_mod"))), "block_size": 2},
         seed=63),
    Case("flex-prefix-softcap", "flex_attention", SELF7,
         call={"mask_mod": Mod("prefix_lm_mod", (3,)), "score_mod": Mod("softcap_mod", (1.5,)), "block_size": 3},
         seed=64),
    Case("flex-alibi-causal-offset", "flex_attention", HEADS7,
         call={"mask_mod": Mod("causal_mod", (4,)), "score_mod": Mod("alibi_mod", (2, 4)), "block_size": 2}, seed=65),
    Case("flex-relative-bias-3d", "flex_attention", QKV7,
         call={"score_mod": Mod("relative_bias_mod", (((0.5, -1.0, 2.0, 0.3, -0.7),),)), "block_size": 4}, seed=66),
    Case("flex-empty-rows-lse", "flex_attention", SELF7,
         call={"mask_mod": Mod("causal_mod", (-2,)), "block_size": 2, "return_lse": True}, seed=67),
    # the encoder-decoder Transformer: the encoder on tokens; the decoder on the encoder's outputs (a float
    # input) and tokens X, whole (teacher forcing) or in pieces, step by step after the first
    Case("transformer-encoder", "TransformerEncoder", (),
         {"vocab_size": 7, "num_hiddens": 8, "ffn_num_hiddens": 12, "num_heads": 2, "num_blocks": 2},
         tokens=(("tokens", (B, 5), 7),), valid_lens=(5, 2), seed=53),
    Case("transformer-decoder", "TransformerDecoder", ((B, 4, 8),),
         {"vocab_size": 9, "num_hiddens": 8, "ffn_num_hiddens": 12, "num_heads": 2, "num_blocks": 2},
         tokens=(("X", (B, 5), 9),), valid_lens=(4, 1), lens_arg="enc_valid_lens", seed=54),
    Case("transformer-decoder-steps", "TransformerDecoder", ((B, 3, 4),),
         {"vocab_size": 6, "num_hiddens": 4, "ffn_num_hiddens": 4, "num_heads": 2, "num_blocks": 2, "bias": True},
         tokens=(("X", (B, 4), 6),), valid_lens=(2, 3), lens_arg="enc_valid_lens", pieces=(2, 1, 1), seed=55),
    # merging partial results: outputs then log-sum-exps, one of each per part
    Case("merge-2", "merge_attention", ((B, Q, DV),) * 2 + ((B, Q),) * 2, seed=50),
    Case("merge-3-4d", "merge_attention", ((B, 2, Q, DV),) * 3 + ((B, 2, Q),) * 3, seed=51),
    # linear attention in its three forms, and the gated delta rule in its two, states in and out
    Case("linear-chunked", "linear_attention", LIN7, call={"chunk_size": 3}, seed=80),
    Case("linear-recurrent", "linear_attention", LIN7, call={"form": "recurrent"}, seed=81),
    Case("linear-parallel-relu", "linear_attention", LIN7, call={"form": "parallel", "feature_map": "relu"}, seed=82),
    Case("linear-noncausal", "linear_attention", ((B, Q, 4), (B, 6, 4), (B, 6, DV)), call={"causal": False}, seed=83),
    Case("linear-state-chunked", "linear_attention", LIN7 + STATE, keywords=("state", "state"), positive=(4,),
         call={"chunk_size": 2, "return_state": True}, seed=84),
    Case("linear-state-recurrent", "linear_attention", LIN7 + STATE, keywords=("state", "state"), positive=(4,),
         call={"form": "recurrent", "return_state": True}, seed=85),
    Case("delta-chunked", "gated_delta_rule", DELTA7, positive=(3, 4), call={"chunk_size": 3}, seed=86),
    Case("delta-recurrent", "gated_delta_rule", DELTA7, positive=(3, 4), call={"form": "recurrent"}, seed=87),
    Case("delta-state-chunked", "gated_delta_rule", DELTA7 + ((B, 2, 4, DV),), keywords=("state",), positive=(3, 4),
         call={"chunk_size": 4, "return_state": True}, seed=88),
    Case("delta-state-recurrent-3d", "gated_delta_rule", ((B, 5, 3), (B, 5, 3), (B, 5, 2), (B, 5), (B, 5), (B, 3, 2)),
         keywords=("state",), positive=(3,), call={"form": "recurrent", "return_state": True}, seed=89),
    # the Gated DeltaNet layer: output and its cache (conv inputs, state), in one pass and in pieces
    Case("gdn", "GatedDeltaNet", ((B, 6, 8),), {"num_hiddens": 8, "num_heads": 2, "chunk_size": 4}, seed=90),
    Case("gdn-sizes-pieces", "GatedDeltaNet", ((B, 6, 8),),
         {"num_hiddens": 8, "num_heads": 2, "head_size": 3, "value_head_size": 2, "conv_size": 3, "chunk_size": 2},
         pieces=(3, 1, 2), seed=91),
]
