"""JAX and Flax nnx's own ways (see tests/adapters/__init__.py)."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def call_in_mode(module, train, *inputs, **kwargs):
    module.train() if train else module.eval()
    return module(*inputs, **kwargs)


def array(values):
    return jnp.array(values)  # int32 for integers


def stop_gradient(x):
    return jax.lax.stop_gradient(x)


def _closure(transform):
    """A transformation of the closure over the module, as a JAX tutorial writes it."""
    return lambda fn, module: transform(functools.partial(fn, module))


def _every_argument(grad):
    """`grad` with respect to every argument of the function, however many it takes."""
    return lambda fn: lambda *xs: grad(fn, argnums=tuple(range(len(xs))))(*xs)


def _nnx_grad(fn, module):
    """nnx.grad with the module as an argument (its state lifted in), d/d the arrays after it."""
    return lambda *xs: nnx.grad(fn, argnums=tuple(range(1, len(xs) + 1)))(module, *xs)


def _nnx_vmap(fn, module):
    """nnx.vmap with the module's parameters shared and its attention weights mapped (one set per
    example comes back stacked); a module that has kept weights of its own cannot go in that way."""
    axes = nnx.StateAxes({nnx.Intermediate: 0, ...: None})
    return lambda *xs: nnx.vmap(fn, in_axes=(axes, *[0] * len(xs)))(module, *xs)


def transforms():
    return {
        "jax.jit": ("compiled", _closure(jax.jit)),
        "nnx.jit": ("compiled", lambda fn, module: functools.partial(nnx.jit(fn), module)),
        "jax.vmap": ("vmap", _closure(jax.vmap)),
        "nnx.vmap": ("vmap", _nnx_vmap),
        "jax.grad": ("autodiff", _closure(_every_argument(jax.grad))),
        "nnx.grad": ("autodiff", _nnx_grad),
    }
