"""JAX and Flax nnx's own ways (see tests/adapters/__init__.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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


def transforms():
    def closure(transform):  # over the module, as a JAX tutorial writes it
        return lambda fn, module: transform(functools.partial(fn, module))

    def every_argument(grad):  # d/d every argument, however many the function takes
        return lambda fn: lambda *xs: grad(fn, argnums=tuple(range(len(xs))))(*xs)

    def nnx_grad(fn, module):  # the module passed in, its state lifted; d/d the arrays after it
        return lambda *xs: nnx.grad(fn, argnums=tuple(range(1, len(xs) + 1)))(module, *xs)

    def nnx_vmap(fn, module):
        # The parameters shared, the attention weights mapped: each example's come back stacked
        # (so the module must not hold weights of its own from an earlier call going in).
        axes = nnx.StateAxes({nnx.Intermediate: 0, ...: None})
        return lambda *xs: nnx.vmap(fn, in_axes=(axes, *[0] * len(xs)))(module, *xs)

    def as_stored(a):  # an array as a checkpoint holds it: NumPy, a random key as its key data
        return jax.random.wrap_key_data(np.asarray(jax.random.key_data(a))) \
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else np.asarray(a)

    def split_and_merged(fn, module):
        # nnx.split into a graph definition and a state, the state's arrays through NumPy (as a
        # checkpoint holds them) into a copy of it, and nnx.merge of the two: a module whose call
        # needs something outside its graph and state, or that breaks on the way, fails here
        def run(*xs):
            graphdef, state = nnx.split(module)
            restored = jax.tree.map(lambda a: a, state)
            nnx.replace_by_pure_dict(restored, jax.tree.map(as_stored, nnx.to_pure_dict(state)))
            return fn(nnx.merge(graphdef, restored), *xs)

        return run

    return {
        "jax.jit": ("compiled", closure(jax.jit)),
        "nnx.jit": ("compiled", lambda fn, module: functools.partial(nnx.jit(fn), module)),
        "jax.vmap": ("vmap", closure(jax.vmap)),
        "nnx.vmap": ("vmap", nnx_vmap),
        "jax.grad": ("autodiff", closure(every_argument(jax.grad))),
        "nnx.grad": ("autodiff", nnx_grad),
        "nnx.split and nnx.merge": ("container", split_and_merged),
    }
