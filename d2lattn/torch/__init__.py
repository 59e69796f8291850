"""The PyTorch backend: torch.nn modules, autograd, `module.training` as the mode."""

from d2lattn import _backend, api

with _backend.requires("torch"):
    from d2lattn.notebook import check_shape, show_source
    from d2lattn.plotting import show_heatmaps
    from d2lattn.torch.attention import AdditiveAttention, ConcatAttention, DotProductAttention, MultiHeadAttention
    from d2lattn.torch.blocks import (
        AddNorm,
        LayerNorm,
        PositionWiseFFN,
        TransformerDecoderBlock,
        TransformerEncoderBlock,
    )
    from d2lattn.torch.encoding import PositionalEncoding
    from d2lattn.torch.grads import value_and_grads
    from d2lattn.torch.ops import (
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
    from d2lattn.torch.params import get_params, set_params
    from d2lattn.torch.seq2seq import (
        GRU,
        Seq2Seq,
        Seq2SeqAttentionDecoder,
        Seq2SeqEncoder,
        greedy_decode,
        sequence_loss,
    )
    from d2lattn.torch.train import train_seq2seq

BACKEND = "torch"
__all__ = list(api.__all__)
