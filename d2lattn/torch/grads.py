"""Gradients by PyTorch autograd, in the harness's portable form."""

import torch
from torch import nn

from d2lattn.torch.ops import tensor, to_numpy
from d2lattn.torch.params import _named


def _leaves(out):
    """The tensors of an output that nests tuples or lists (a cache), in order."""
    return [leaf for o in out for leaf in _leaves(o)] if isinstance(out, (tuple, list)) else [out]


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """`compiled=True` captures the graph with torch.compile ("aot_eager": the
    graph is traced and differentiated ahead of time, no C++ toolchain needed), from cleared
    caches, so a run is never a silent eager fallback.
    Keyword arrays are not differentiated: pass what needs a gradient (a score_bias) as
    an input. A tuple output takes one projection per element; one that nests a cache,
    (Y, (keys, values)), counts as the flat tuple of its arrays."""
    xs = [tensor(x).requires_grad_() for x in inputs]
    named = _named(fn) if isinstance(fn, nn.Module) else {}
    kwargs = {k: v if v is None or isinstance(v, bool) else torch.as_tensor(v) for k, v in kwargs.items()}
    if compiled:
        # Each call compiles afresh: a module built anew recompiles its class's forward, and past
        # dynamo's recompile limit it would silently run eagerly, so the caches are cleared first.
        torch._dynamo.reset()
    call = torch.compile(fn, backend="aot_eager", dynamic=False) if compiled else fn
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # compiled, or an error
        out = call(*xs, **kwargs)
    several = isinstance(out, (tuple, list))
    outs, projections = (_leaves(out), projection) if several else ((out,), (projection,))
    objective = sum((o * tensor(p)).sum() for o, p in zip(outs, projections))
    params = [p for p, _ in named.values()]
    grads = torch.autograd.grad(objective, xs + params, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(xs + params, grads)]
    param_grads = {name: to_numpy(layout(g)) for (name, (_, layout)), g in zip(named.items(), grads[len(xs):])}
    output = tuple(to_numpy(o) for o in outs) if several else to_numpy(out)
    return output, [to_numpy(g) for g in grads[: len(xs)]], param_grads
