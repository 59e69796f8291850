"""Ring attention on JAX's own engine: shard_map over a mesh of 4 CPU devices, the key/value shards
passed around the ring with lax.ppermute, each device merging what it sees with merge_attention;
forward and gradients (JAX differentiates through ppermute and the custom VJP) equal full attention.

The 4 host devices exist only if XLA_FLAGS says so before JAX starts, so the test runs the ring
in a fresh Python process of its own."""

import os
import pathlib
import subprocess
import sys

import numpy as np

WORLD, SHARD = 4, 6
ROOT = pathlib.Path(__file__).resolve().parents[2]


def ring():
    """Run in the child process: build the mesh, run the ring, compare with full attention."""
    import functools

    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from d2lattn import jax as d2l

    assert len(jax.devices("cpu")) == WORLD, jax.devices()
    mesh = jax.make_mesh((WORLD,), ("ring",))
    seq = P(None, None, "ring", None)  # (b, heads, T, d): the sequence axis is split over the devices

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(seq, seq, seq), out_specs=seq)
    def ring_attention(queries, keys, values):  # the local shards, (b, heads, SHARD, d)
        rank = lax.axis_index("ring")
        i = jnp.arange(SHARD)
        outputs, lses = [], []
        for step in range(WORLD):
            source = (rank - step) % WORLD  # whose keys and values this device holds now
            # causal across shards as per-query lengths: query rank*SHARD+i keeps key source*SHARD+j iff j < lens
            lens = jnp.broadcast_to(jnp.clip((rank - source) * SHARD + i + 1, 0, SHARD), queries.shape[:1] + (SHARD,))
            out, lse = d2l.blockwise_attention(queries, keys, values, lens, block_size=4, return_lse=True)
            outputs.append(out)
            lses.append(lse)
            perm = [(r, (r + 1) % WORLD) for r in range(WORLD)]  # pass on to the next device
            keys, values = lax.ppermute(keys, "ring", perm), lax.ppermute(values, "ring", perm)
        return d2l.merge_attention(outputs, lses)[0]

    rng = np.random.default_rng(0)
    inputs = [jnp.asarray(rng.normal(size=(2, 3, WORLD * SHARD, 4)), jnp.float32) for _ in range(3)]
    shards = [jax.device_put(x, NamedSharding(mesh, seq)) for x in inputs]  # each device holds its shard
    projection = jnp.asarray(rng.normal(size=(2, 3, WORLD * SHARD, 4)), jnp.float32)
    causal = jnp.tril(jnp.ones((WORLD * SHARD, WORLD * SHARD), bool))

    def loss(attend, *xs):
        return jnp.sum(attend(*xs) * projection)

    dense = lambda q, k, v: d2l.DotProductAttention()(q, k, v, mask=causal)  # noqa: E731
    got = jax.jit(jax.value_and_grad(functools.partial(loss, ring_attention), argnums=(0, 1, 2)))(*shards)
    want = jax.value_and_grad(functools.partial(loss, dense), argnums=(0, 1, 2))(*inputs)
    np.testing.assert_allclose(jax.jit(ring_attention)(*shards), dense(*inputs), atol=1e-5)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, atol=1e-4)
    print("ring attention on", mesh.devices.size, "devices: ok")


def test_ring_attention_with_shard_map_and_ppermute():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={WORLD}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", "from tests.distributed.test_jax import ring; ring()"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ring attention on 4 devices: ok" in done.stdout
