"""JAX and Flax nnx's own ways (see tests/adapters/__init__.py)."""

import jax
import jax.numpy as jnp


def call_in_mode(module, train, *inputs, **kwargs):
    module.train() if train else module.eval()
    return module(*inputs, **kwargs)


def array(values):
    return jnp.array(values)  # int32 for integers


def stop_gradient(x):
    return jax.lax.stop_gradient(x)


def run_left_in_mode(module, train, fn):
    module.train() if train else module.eval()
    return fn()


def eagerly():
    return jax.disable_jit()  # jitted functions run in Python, with concrete shapes
