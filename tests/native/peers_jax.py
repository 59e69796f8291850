"""Flax nnx's own attention holding d2lattn's canonical weights (tests/native/weights.py), for
tests/native/test_jax.py and benchmarks/bench_jax.py."""

import jax.numpy as jnp
from flax import nnx


def native_mha(params, hidden, heads, kv_heads=None):
    """flax.nnx.MultiHeadAttention holding the canonical weights, in eval mode.

    Its q/k/v kernels are (in, heads, head_dim) and its out kernel (heads, head_dim, out):
    head i owns columns i*dh:(i+1)*dh of W_q, W_k, W_v and rows i*dh:(i+1)*dh of W_o.
    With `kv_heads` (grouped-query) its k/v kernels are (in, kv_heads, head_dim).
    """
    bias = "b_q" in params
    mha = nnx.MultiHeadAttention(num_heads=heads, in_features=hidden, qkv_features=hidden, out_features=hidden,
                                 num_kv_heads=kv_heads, dropout_rate=0.0, use_bias=bias, decode=False,
                                 rngs=nnx.Rngs(0))
    dh = hidden // heads
    for name, layer in (("q", mha.query), ("k", mha.key), ("v", mha.value)):
        layer.kernel[...] = jnp.asarray(params[f"W_{name}"]).reshape(-1, layer.kernel.shape[1], dh)  # (in, heads, dh)
        if bias:
            layer.bias[...] = jnp.asarray(params[f"b_{name}"]).reshape(-1, dh)                       # (heads, dh)
    mha.out.kernel[...] = jnp.asarray(params["W_o"]).reshape(heads, dh, hidden)        # (heads, dh, out)
    if bias:
        mha.out.bias[...] = jnp.asarray(params["b_o"])
    mha.eval()
    return mha


def padding_mask(lens, num_keys):
    """(b, 1, 1, k), True = may attend: nnx.MultiHeadAttention's mask for key-padding lengths."""
    return (jnp.arange(num_keys) < lens[:, None])[:, None, None, :]
