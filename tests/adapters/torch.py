"""PyTorch's own ways (see tests/adapters/__init__.py)."""

import functools

import torch


def call_in_mode(module, train, *inputs, **kwargs):
    module.train(train)
    return module(*inputs, **kwargs)


def array(values):
    return torch.tensor(values)  # int64 for integers


def stop_gradient(x):
    return x.detach()


def _closure(transform):
    """A transformation of the closure over the module, as a PyTorch tutorial writes it."""
    return lambda fn, module: transform(functools.partial(fn, module))


def _grad(fn):
    """torch.func.grad with respect to every argument of the function, however many it takes."""
    return lambda *xs: torch.func.grad(fn, argnums=tuple(range(len(xs))))(*xs)


def _compile(fn):
    """fullgraph=True: a graph break is an error. A module built anew recompiles its class's forward,
    and past dynamo's recompile limit it would run eagerly, so the caches are cleared first.
    Dynamo traces nn.GRU (under d2lattn's GRU) only with its experimental allow_rnn."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)

    def run(*xs):
        with torch._dynamo.config.patch(allow_rnn=True):
            return compiled(*xs)

    return run


class _Call(torch.nn.Module):
    """fn(module, *arrays) as a module of its own, for torch.export (which exports modules)."""

    def __init__(self, fn, module):
        super().__init__()
        self.fn, self.module = fn, module

    def forward(self, *arrays):
        return self.fn(self.module, *arrays)


def _export(fn, module):
    return lambda *xs: torch.export.export(_Call(fn, module), xs).module()(*xs)


def transforms():
    return {
        "torch.compile": ("compiled", _closure(_compile)),
        "torch.export": ("compiled", _export),
        "torch.func.vmap": ("vmap", _closure(torch.func.vmap)),
        "torch.func.grad": ("autodiff", _closure(_grad)),
    }
