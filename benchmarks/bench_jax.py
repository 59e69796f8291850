"""Our JAX attention against JAX's own: `python -m benchmarks.bench_jax`.

MultiHeadAttention against flax.nnx.MultiHeadAttention (same weights; eval,
key-padding lengths, no grad), both called under nnx.jit; and
DotProductAttention against jax.nn.dot_product_attention on the same per-head
tensors, both under jax.jit / nnx.jit. Grouped-query MultiHeadAttention (num_kv_heads)
against nnx.MultiHeadAttention(num_kv_heads=...), same weights, both under nnx.jit. Then
generation with and without the K/V cache at growing contexts. Timings wait with
block_until_ready.
"""


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import cache, checkpoints, common, flex, linear, memory
from d2lattn import jax as d2l
from tests.native.peers_jax import native_mha, padding_mask


@nnx.jit
def run_ours(module, X, lens):
    return module(X, X, X, lens)


@nnx.jit
def run_native(module, X, lens):
    return module(X, X, X, mask=padding_mask(lens, X.shape[1]))


@nnx.jit
def run_dot(attention, q, lens):
    return attention(q, q, q, lens)                                # (b, heads, T, dh)


@jax.jit
def run_sdpa(q, lens):
    q = q.transpose(0, 2, 1, 3)                                    # (b, T, heads, dh): JAX's layout
    return jax.nn.dot_product_attention(q, q, q, key_value_seq_lengths=lens).transpose(0, 2, 1, 3)


def grouped_query(tokens):
    """Our MultiHeadAttention(num_kv_heads=2) against nnx.MultiHeadAttention(num_kv_heads=2), key padding."""
    X, lens = (jnp.asarray(a) for a in common.inputs(tokens))
    params = common.gqa_weights(common.mha_weights(bias=True))
    ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True, num_kv_heads=common.GQA_KV_HEADS)
    ours.eval()
    d2l.set_params(ours, params)
    native = native_mha(params, common.HIDDEN, common.HEADS, kv_heads=common.GQA_KV_HEADS)
    np.testing.assert_allclose(run_ours(ours, X, lens), run_native(native, X, lens), atol=1e-4)
    return (f"GQA {common.HEADS} heads / {common.GQA_KV_HEADS} kv, {tokens} tokens vs nnx.MultiHeadAttention",
            *common.compare(lambda: run_ours(ours, X, lens), lambda: run_native(native, X, lens),
                            sync=jax.block_until_ready))


def main():
    rows = []
    for tokens in common.TOKENS:
        X, lens = common.inputs(tokens)
        X, lens = jnp.asarray(X), jnp.asarray(lens)
        params = common.mha_weights(bias=True)
        ours = d2l.MultiHeadAttention(common.HIDDEN, common.HEADS, bias=True)
        ours.eval()
        d2l.set_params(ours, params)
        native = native_mha(params, common.HIDDEN, common.HEADS)
        np.testing.assert_allclose(run_ours(ours, X, lens), run_native(native, X, lens), atol=1e-4)
        rows.append((f"MHA {tokens} tokens vs nnx.MultiHeadAttention", *common.compare(
            lambda: run_ours(ours, X, lens), lambda: run_native(native, X, lens),
            sync=jax.block_until_ready)))
        q = jnp.asarray(np.random.default_rng(2).normal(
            size=(common.BATCH, common.HEADS, tokens, common.HIDDEN // common.HEADS)).astype(np.float32))
        attention = d2l.DotProductAttention()
        attention.eval()
        np.testing.assert_allclose(run_dot(attention, q, lens), run_sdpa(q, lens), atol=1e-4)
        rows.append((f"DotProductAttention {tokens} tokens vs jax.nn", *common.compare(
            lambda: run_dot(attention, q, lens), lambda: run_sdpa(q, lens), sync=jax.block_until_ready)))
        rows.append(grouped_query(tokens))
    common.report(f"JAX {jax.__version__}, Flax nnx, {jax.default_backend()} ({jax.device_count()} device), "
                  f"batch {common.BATCH}, hidden {common.HIDDEN}, {common.HEADS} heads", rows)
    common.generation(d2l, "jax.jit")


def blockwise_memory():
    """Blockwise against dense attention: peak memory (fresh processes) and time, vs jax.nn too."""
    fused = jax.jit(lambda q, k, v: jnp.swapaxes(jax.nn.dot_product_attention(      # (b, T, heads, d) layout
        jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), is_causal=True), 1, 2))
    memory.main(d2l, fused=fused, sync=jax.block_until_ready)


@nnx.jit
def _step(layer, x, cache):
    return layer(x, cache=cache, training=False)


def cache_per_token():
    """Cache bytes and time per generated token of MHA, GQA and MLA at 1k and 8k, each step under nnx.jit."""
    cache.main(d2l, compile=lambda layer: lambda x, c: _step(layer, x, c), how="nnx.jit")


def pretrained():
    """SmolLM2-135M's configuration: from_pretrained's seconds and generate's tokens per second
    (benchmarks/checkpoints.py)."""
    checkpoints.tokens_per_second(d2l, how="generate's steps under jax.jit")


def linear_forms():
    """Linear attention and the delta rule at T = 4096: chunked against recurrent, each under jax.jit."""
    linear.main(d2l, compile=jax.jit, how="jax.jit")


if __name__ == "__main__":
    main()
    cache_per_token()
    pretrained()
    linear_forms()
    blockwise_memory()
    flex.main(d2l, sync=jax.block_until_ready)
