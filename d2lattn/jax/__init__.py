"""The JAX backend: flax.nnx modules, jax autodiff and nnx.jit, the nnx train/eval state as the mode.

Modules are ready to call after construction. Randomness (initial weights and
dropout) comes from the keyword-only `rngs: nnx.Rngs`, by default `nnx.Rngs(0)`,
so two modules built alike start alike. After a call, eager or under `nnx.jit`,
`.attention_weights` holds the weights (see DotProductAttention).
"""

from d2lattn import _backend, api

with _backend.requires("jax"):
    from d2lattn.jax.attention import AdditiveAttention, ConcatAttention, DotProductAttention, MultiHeadAttention
    from d2lattn.jax.blocks import (
        AddNorm,
        LayerNorm,
        PositionWiseFFN,
        TransformerDecoderBlock,
        TransformerEncoderBlock,
    )
    from d2lattn.jax.encoding import PositionalEncoding
    from d2lattn.jax.grads import value_and_grads
    from d2lattn.jax.ops import (
        arange,
        bmm,
        causal_mask,
        concat,
        exp,
        masked_softmax,
        matmul,
        normal,
        ones,
        reshape,
        stack,
        swapaxes,
        tanh,
        tensor,
        to_numpy,
        zeros,
    )
    from d2lattn.jax.params import get_params, set_params
    from d2lattn.jax.seq2seq import (
        GRU,
        Seq2Seq,
        Seq2SeqAttentionDecoder,
        Seq2SeqEncoder,
        greedy_decode,
        sequence_loss,
    )
    from d2lattn.jax.train import train_seq2seq
    from d2lattn.notebook import check_shape, show_source
    from d2lattn.plotting import show_heatmaps

BACKEND = "jax"
__all__ = list(api.__all__)
