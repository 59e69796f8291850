"""Gradients by jax autodiff (nnx.value_and_grad), in the harness's portable form."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from d2lattn.jax.ops import tensor, to_numpy
from d2lattn.jax.params import _named


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """`compiled=True` runs forward and backward under `nnx.jit`, with array keyword
    arguments (`valid_lens`, `mask`, token ids) traced; a module's new state (its
    attention weights) comes back from the jitted call, as it does eagerly. Token ids
    are integers, passed by name and not differentiated. A tuple output takes a list
    of projections, one per element.

    `fn` is an nnx.Module, passed in so that nnx lifts its state: gradients with
    respect to its inputs and its nnx.Params, and its attention weights come back.
    Any other function (a closure over a module too) is differentiated with respect
    to its inputs; a module it closes over keeps no attention weights from the call.
    """
    xs = [tensor(x) for x in inputs]
    several = isinstance(projection, (list, tuple))  # one projection per element of a tuple output
    projections = [tensor(p) for p in projection] if several else [tensor(projection)]
    flags = {k: v for k, v in kwargs.items() if v is None or isinstance(v, bool)}   # static: training
    arrays = {k: jnp.asarray(v) for k, v in kwargs.items() if k not in flags}       # valid_lens, mask, tokens
    is_module = isinstance(fn, nnx.Module)

    def objective(fn, xs, arrays):
        out = fn(*xs, **arrays, **flags)
        outs = out if several else (out,)
        return sum(jnp.sum(o * p) for o, p in zip(outs, projections)), out

    # d/d the module's nnx.Params (a State) and d/d each input; any other function is a static argument
    step = nnx.value_and_grad(objective, argnums=(0, 1) if is_module else 1, has_aux=True)
    if compiled:
        step = nnx.jit(step, static_argnums=() if is_module else 0)
    (_, out), grads = step(fn, xs, arrays)
    output = tuple(to_numpy(o) for o in out) if several else to_numpy(out)
    if not is_module:
        return output, [to_numpy(g) for g in grads], {}
    state, input_grads = grads
    flat = dict(nnx.to_flat_state(state))                                       # {path: gradient}
    param_grads = {name: np.array(flat[path][...]) for name, path in _named(fn).items()}
    return output, [to_numpy(g) for g in input_grads], param_grads
