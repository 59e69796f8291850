"""Sequence-sharded attention on tf.distribute: MirroredStrategy over 4 logical CPU devices, each
replica holding one shard of a causal sequence's queries, keys and values.

tf.distribute has no point-to-point collective (nothing like lax.ppermute or send/recv between
replicas in its public API), so the ring's passing of shards is expressed by its other form:
ReplicaContext.all_gather of the key/value shards, after which each replica attends to every
shard with blockwise_attention and merges the partial results with merge_attention, the same
merge the ring does step by step. Logical devices must be configured before TensorFlow starts
its runtime, so the test runs this in a fresh Python process of its own."""

import os
import pathlib
import subprocess
import sys

import numpy as np

WORLD, SHARD = 4, 6
ROOT = pathlib.Path(__file__).resolve().parents[2]


def gather_and_merge():
    """Run in the child process: 4 replicas, all-gather the shards, merge, compare with full attention."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * WORLD)
    from d2lattn import tensorflow as d2l

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == WORLD, devices
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(2, 3, WORLD * SHARD, 4)).astype(np.float32) for _ in range(3)]
    shards = [strategy.experimental_distribute_values_from_function(
        lambda context, x=x: tf.constant(x[:, :, context.replica_id_in_sync_group * SHARD:][:, :, :SHARD]))
        for x in inputs]  # each replica holds its own (b, heads, SHARD, d) shard

    def attend(queries, keys, values):
        context = tf.distribute.get_replica_context()
        rank = context.replica_id_in_sync_group
        keys, values = (context.all_gather(x[None], axis=0) for x in (keys, values))  # (WORLD, b, heads, SHARD, d)
        # all_gather forgets the static shape, which flex_attention plans its tiles by
        keys, values = (tf.ensure_shape(x, (WORLD, *queries.shape)) for x in (keys, values))
        i = tf.range(SHARD)
        outputs, lses = [], []
        for source in range(WORLD):
            # causal across shards as per-query lengths: query rank*SHARD+i keeps key source*SHARD+j iff j < lens
            lens = tf.broadcast_to(tf.clip_by_value((rank - source) * SHARD + i + 1, 0, SHARD), (2, SHARD))
            out, lse = d2l.blockwise_attention(queries, keys[source], values[source], lens, block_size=4,
                                               return_lse=True)
            outputs.append(out)
            lses.append(lse)
        return d2l.merge_attention(outputs, lses)[0]

    out = strategy.run(tf.function(attend), args=shards)
    out = tf.concat(strategy.experimental_local_results(out), axis=2)  # (b, heads, T, dv), in replica order
    mask = np.tril(np.ones((WORLD * SHARD, WORLD * SHARD), bool))
    want = d2l.DotProductAttention()(*(tf.constant(x) for x in inputs), mask=mask)
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=1e-5)
    print("sharded attention on", strategy.num_replicas_in_sync, "replicas: ok")


def test_sharded_attention_with_all_gather_on_mirrored_strategy():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", "from tests.distributed.test_tensorflow import gather_and_merge; "
                           "gather_and_merge()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sharded attention on 4 replicas: ok" in done.stdout
