"""The NumPy reference backend: float64, forward only, the oracle every backend is tested against."""

from d2lattn import _backend, api

with _backend.requires("numpy"):
    from d2lattn.notebook import check_shape, show_source
    from d2lattn.numpy.attention import AdditiveAttention, ConcatAttention, DotProductAttention, MultiHeadAttention
    from d2lattn.numpy.blocks import (
        AddNorm,
        LayerNorm,
        PositionWiseFFN,
        TransformerDecoderBlock,
        TransformerEncoderBlock,
    )
    from d2lattn.numpy.encoding import PositionalEncoding
    from d2lattn.numpy.grads import value_and_grads
    from d2lattn.numpy.ops import (
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
    from d2lattn.numpy.params import get_params, set_params
    from d2lattn.numpy.seq2seq import (
        GRU,
        Seq2Seq,
        Seq2SeqAttentionDecoder,
        Seq2SeqEncoder,
        greedy_decode,
        sequence_loss,
    )
    from d2lattn.numpy.train import train_seq2seq
    from d2lattn.plotting import show_heatmaps

BACKEND = "numpy"
__all__ = list(api.__all__)
