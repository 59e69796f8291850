"""PyTorch's own ways (see tests/adapters/__init__.py)."""

import contextlib

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
