"""Gradients by MXNet autograd, in the harness's portable form."""

from mxnet import autograd
from mxnet.gluon import nn

from d2lattn.mxnet.ops import keep_mask, tensor, to_numpy
from d2lattn.mxnet.params import _named


class _Function(nn.HybridBlock):
    """A function of arrays (scores first, like `masked_softmax`) as a block, so it can be hybridized.

    As in the attention blocks, `valid_lens` and `mask` become one boolean
    `keep` array before the graph, which calls `fn(*inputs, mask=keep)`.
    """

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __call__(self, *inputs, valid_lens=None, mask=None):
        keep = keep_mask(inputs[0].shape, valid_lens, mask, inputs[0].ctx)
        return super().__call__(*inputs, keep)

    def hybrid_forward(self, F, *args):
        *inputs, keep = args
        return self.fn(*inputs, mask=keep)


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """`compiled=True` hybridizes: a block itself (it stays hybridized), a function
    inside a `_Function` block; forward and backward then run as one cached graph.
    Recording puts autograd in training mode: pass `training=False` for evaluation."""
    xs = [tensor(x) for x in inputs]
    for x in xs:
        x.attach_grad()
    named = _named(fn) if isinstance(fn, nn.Block) else {}
    kwargs = {k: v if v is None or isinstance(v, bool) else tensor(v) for k, v in kwargs.items()}
    call = fn
    if compiled:
        call = fn if isinstance(fn, nn.Block) else _Function(fn)
        call.hybridize()
    with autograd.record():
        out = call(*xs, **kwargs)
        objective = (out * tensor(projection)).sum()
    objective.backward()
    param_grads = {name: to_numpy(layout(p.grad())) for name, (p, layout) in named.items()}
    return to_numpy(out), [to_numpy(x.grad) for x in xs], param_grads
