"""Gradients by MXNet autograd, in the harness's portable form."""

import inspect

from mxnet import autograd
from mxnet.gluon import nn

from d2lattn.mxnet.ops import keep_mask, tensor, to_numpy
from d2lattn.mxnet.params import _named


class _Function(nn.HybridBlock):
    """A function of arrays as a block, so it can be hybridized.

    Its keyword arrays (token ids, lengths) enter the graph after its positional
    inputs and reach `fn` by name. As in the attention blocks, a function that
    takes a `mask` (masked_softmax) gets `valid_lens` and `mask` as one boolean
    `keep` array, made before the graph.
    """

    def __init__(self, fn):
        super().__init__()
        self.fn, self.names = fn, ()
        self.masks = "mask" in inspect.signature(fn).parameters

    def __call__(self, *inputs, **kwargs):
        if self.masks:
            kwargs["mask"] = keep_mask(inputs[0].shape, kwargs.pop("valid_lens", None), kwargs.get("mask"),
                                       inputs[0].ctx)
        arrays = {k: v for k, v in kwargs.items() if v is not None}
        self.names = tuple(arrays)
        return super().__call__(*inputs, *arrays.values())

    def hybrid_forward(self, F, *args):
        split = len(args) - len(self.names)
        return self.fn(*args[:split], **dict(zip(self.names, args[split:])))


def _leaves(out):
    """The arrays of an output that nests tuples and lists (a cache), in order."""
    return [leaf for o in out for leaf in _leaves(o)] if isinstance(out, (tuple, list)) else [out]


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """`compiled=True` hybridizes: a block itself (it stays hybridized; a plain Block
    hybridizes its children), a function inside a `_Function` block; forward and
    backward then run as cached graphs. Recording puts autograd in training mode:
    pass `training=False` for evaluation. Keyword arrays are not differentiated: pass what
    needs a gradient (a score_bias) as an input. An output that nests a cache, (Y, (keys,
    values)), counts as the flat tuple of its arrays, one projection each."""
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
        several = isinstance(out, (tuple, list))  # one projection per array of a tuple output
        outs, projections = (_leaves(out), projection) if several else ((out,), (projection,))
        objective = sum((o * tensor(p)).sum() for o, p in zip(outs, projections))
    objective.backward()
    param_grads = {name: to_numpy(layout(p.grad())) for name, (p, layout) in named.items()}
    output = tuple(to_numpy(o) for o in outs) if several else to_numpy(out)
    return output, [to_numpy(x.grad) for x in xs], param_grads
