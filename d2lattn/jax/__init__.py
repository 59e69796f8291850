"""The JAX backend: flax.nnx modules, jax autodiff and nnx.jit, the nnx train/eval state as the mode.

Modules are ready to call after construction. Randomness (initial weights and
dropout) comes from the keyword-only `rngs: nnx.Rngs`, by default `nnx.Rngs(0)`,
so two modules built alike start alike. After a call, eager or under `nnx.jit`,
`.attention_weights` holds the weights; a closure over a module also runs under plain
`jax.jit`, `jax.grad` and `jax.vmap`, and records none there (see DotProductAttention).
"""

from d2lattn import _backend

BACKEND = "jax"

with _backend.requires("jax"):
    __all__ = _backend.export(globals())

