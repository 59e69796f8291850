"""The NumPy reference: forward only, always in evaluation (see tests/adapters/__init__.py)."""

import contextlib

import numpy as np


def call_in_mode(module, train, *inputs, **kwargs):
    # The reference has no training state (_backend.LACKS): training=None is evaluation.
    return module(*inputs, **kwargs)


def array(values):
    return np.array(values)


def stop_gradient(x):
    return x  # no autodiff, so no gradient to stop


def run_left_in_mode(module, train, fn):
    return fn()  # no training state


def eagerly():
    return contextlib.nullcontext()  # nothing is compiled


def transforms():
    return {}  # no compiler, no vmap, no autodiff (_backend.LACKS)
