"""Gradients for the reference: float64 central finite differences.

Each backend's `value_and_grads` answers with its own autodiff; this one is the
independent check they are all held to.
"""

import numpy as np

from d2lattn.numpy.params import Module, _named

STEP = 1e-6


def _central_difference(f, x):
    """d f / d x for a scalar function f of the array x, perturbed in place."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + STEP
        up = f()
        x[i] = saved - STEP
        down = f()
        x[i] = saved
        grad[i] = (up - down) / (2 * STEP)
    return grad


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """A tuple output takes a tuple (or list) of projections, one per element. An output entry
    that is not finite (blockwise_attention's lse of an empty row, -inf) does not move under a
    small step, so it counts as a constant: zero gradient, where -inf - -inf would be NaN."""
    del compiled  # NumPy has no compiler: both modes are this computation
    inputs = [np.array(x, dtype=np.float64) for x in inputs]
    output = fn(*inputs, **kwargs)
    several = isinstance(output, tuple)
    projections = [np.asarray(p, dtype=np.float64) for p in (projection if several else [projection])]

    def objective():
        out = fn(*inputs, **kwargs)
        outs = out if several else [out]
        return float(sum(np.sum(np.where(np.isfinite(o), o * p, 0.0)) for o, p in zip(outs, projections)))

    input_grads = [_central_difference(objective, x) for x in inputs]
    params = _named(fn) if isinstance(fn, Module) else {}
    param_grads = {name: _central_difference(objective, value) for name, value in params.items()}
    output = tuple(np.array(o) for o in output) if several else np.array(output)
    return output, input_grads, param_grads
