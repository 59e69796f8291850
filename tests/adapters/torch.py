"""PyTorch's own ways (see tests/adapters/__init__.py)."""

import contextlib
import functools
import io

import torch


def call_in_mode(module, train, *inputs, **kwargs):
    module.train(train)
    return module(*inputs, **kwargs)


def array(values):
    return torch.tensor(values)  # int64 for integers


def stop_gradient(x):
    return x.detach()


def run_left_in_mode(module, train, fn):
    module.train(train)
    return fn()


def eagerly():
    return contextlib.nullcontext()  # PyTorch runs eagerly


def transforms():
    def closure(transform):  # over the module, as a PyTorch tutorial writes it
        return lambda fn, module: transform(functools.partial(fn, module))

    def grad(fn):  # d/d every argument, however many the function takes
        return lambda *xs: torch.func.grad(fn, argnums=tuple(range(len(xs))))(*xs)

    def fullgraph(fn):
        # fullgraph=True: a graph break is an error. A module built anew recompiles its class's
        # forward, and past dynamo's recompile limit it would run eagerly: the caches are cleared.
        # Dynamo traces nn.GRU (under d2lattn's GRU) only with its experimental allow_rnn.
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)

        def run(*xs):
            with torch._dynamo.config.patch(allow_rnn=True):
                return compiled(*xs)

        return run

    class Call(torch.nn.Module):  # fn(module, *arrays) as a module, which is what torch.export exports
        def __init__(self, fn, module):
            super().__init__()
            self.fn, self.module = fn, module

        def forward(self, *arrays):
            return self.fn(self.module, *arrays)

    def export(fn, module):
        return lambda *xs: torch.export.export(Call(fn, module), xs).module()(*xs)

    def saved_and_loaded(fn, module):
        # the module saved whole with torch.save and loaded back, then called as fn calls it (a
        # module that does not pickle, or loses state on the way, fails here)
        def run(*xs):
            buffer = io.BytesIO()
            torch.save(module, buffer)
            buffer.seek(0)
            return fn(torch.load(buffer, weights_only=False), *xs)

        return run

    return {
        "torch.compile": ("compiled", closure(fullgraph)),
        "torch.export": ("compiled", export),
        "torch.func.vmap": ("vmap", closure(torch.func.vmap)),
        "torch.func.grad": ("autodiff", closure(grad)),
        "torch.save and torch.load": ("container", saved_and_loaded),
    }
