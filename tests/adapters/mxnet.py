"""MXNet and Gluon's own ways (see tests/adapters/__init__.py)."""

import contextlib
import functools

from mxnet import autograd
from mxnet import np as mxnp
from mxnet.gluon import nn


def call_in_mode(module, train, *inputs, **kwargs):
    with autograd.record(train_mode=train):
        return module(*inputs, **kwargs)


def array(values):
    return mxnp.array(values)  # float32 even for integers, as d2l's MXNet code writes lengths


def stop_gradient(x):
    return x.detach()


def run_left_in_mode(module, train, fn):
    with autograd.train_mode() if train else autograd.predict_mode():
        return fn()


def eagerly():
    return contextlib.nullcontext()  # Gluon blocks run imperatively unless hybridized


def transforms():
    def hybridized(fn, module):  # the module's own graph, traced on its first call
        module.hybridize()  # (a plain Block hybridizes its children)
        return functools.partial(fn, module)

    def record(call):  # autograd's gradients of call(*arrays) with respect to every array
        def grads(*xs):
            xs = [x.copy() for x in xs]
            for x in xs:
                x.attach_grad()
            with autograd.record():
                value = call(*xs)
            value.backward()
            return [x.grad for x in xs]

        return grads

    class Container(nn.HybridBlock):  # a user's HybridBlock whose graph calls fn(module, *arrays)
        def __init__(self, fn, module):
            super().__init__()
            self.fn, self.module = fn, module

        def hybrid_forward(self, F, *arrays):
            return self.fn(self.module, *arrays)

    class PlainContainer(nn.Block):
        # Gluon lets a HybridBlock hold HybridBlocks only: a plain Block (the seq2seq decoder, which
        # steps through time in Python) goes in a plain Block, whose hybridize() reaches the children.
        def __init__(self, fn, module):
            super().__init__()
            self.fn, self.module = fn, module

        def forward(self, *arrays):
            return self.fn(self.module, *arrays)

    def contained(fn, module):  # inside a user's container, hybridized, as a Gluon user composes blocks
        container = (Container if isinstance(module, nn.HybridBlock) else PlainContainer)(fn, module)
        container.hybridize()
        return container

    return {
        "hybridize": ("compiled", hybridized),
        "autograd.record": ("autodiff", lambda fn, module: record(functools.partial(fn, module))),
        "autograd.record(hybridize)": ("autodiff", lambda fn, module: record(hybridized(fn, module))),
        "hybridized Gluon container": ("container", contained),
    }
