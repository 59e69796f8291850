"""The MXNet backend: hybridizable Gluon blocks on the NumPy interface, autograd,
`autograd.is_training()` as the mode.

Importing it switches MXNet to its NumPy interface (`npx.set_np()`): arrays are
`mxnet.np.ndarray`s with NumPy semantics, which every block here expects.
"""

from d2lattn import _backend, api

with _backend.requires("mxnet"):
    from mxnet import npx

    from d2lattn.mxnet.attention import AdditiveAttention, ConcatAttention, DotProductAttention, MultiHeadAttention
    from d2lattn.mxnet.blocks import (
        AddNorm,
        LayerNorm,
        PositionWiseFFN,
        TransformerDecoderBlock,
        TransformerEncoderBlock,
    )
    from d2lattn.mxnet.encoding import PositionalEncoding
    from d2lattn.mxnet.grads import value_and_grads
    from d2lattn.mxnet.ops import (
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
    from d2lattn.mxnet.params import get_params, set_params
    from d2lattn.mxnet.seq2seq import (
        GRU,
        Seq2Seq,
        Seq2SeqAttentionDecoder,
        Seq2SeqEncoder,
        greedy_decode,
        sequence_loss,
    )
    from d2lattn.mxnet.train import train_seq2seq
    from d2lattn.notebook import check_shape, show_source
    from d2lattn.plotting import show_heatmaps

    npx.set_np()

BACKEND = "mxnet"
__all__ = list(api.__all__)
