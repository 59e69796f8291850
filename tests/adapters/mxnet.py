"""MXNet and Gluon's own ways (see tests/adapters/__init__.py)."""

import contextlib

from mxnet import autograd
from mxnet import np as mxnp


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
