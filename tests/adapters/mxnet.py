"""MXNet and Gluon's own ways (see tests/adapters/__init__.py)."""

from mxnet import autograd
from mxnet import np as mxnp


def call_in_mode(module, train, *inputs, **kwargs):
    with autograd.record(train_mode=train):
        return module(*inputs, **kwargs)


def array(values):
    return mxnp.array(values)  # float32 even for integers, as d2l's MXNet code writes lengths


def stop_gradient(x):
    return x.detach()
