"""Ring attention on MXNet, simulated in one process: MXNet's NumPy interface has no collective or
point-to-point communication between workers (its distributed training goes through the KVStore
parameter server, which pushes and pulls whole parameters, not ring messages), and the project is
archived, so nothing new will come. The ring runs over 4 CPU contexts (mx.cpu(0..3)) as a list of
"devices": each holds one shard of a causal sequence, the key/value shards are copied on to the next
context at each step (the "send"), and each device merges what it saw with merge_attention; the
result equals full attention."""

import mxnet as mx
import numpy as onp
from mxnet import np

from d2lattn import mxnet as d2l

WORLD, SHARD = 4, 6


def test_ring_attention_simulated_over_four_contexts():
    rng = onp.random.default_rng(0)
    inputs = [rng.normal(size=(2, 3, WORLD * SHARD, 4)).astype(onp.float32) for _ in range(3)]
    devices = [mx.cpu(r) for r in range(WORLD)]
    queries, keys, values = ([np.array(x[:, :, r * SHARD:(r + 1) * SHARD], ctx=devices[r]) for r in range(WORLD)]
                             for x in inputs)                              # per device: (b, heads, SHARD, d)
    sources = list(range(WORLD))                                           # whose keys each device holds now
    parts = [[] for _ in devices]
    for _ in range(WORLD):
        for rank in range(WORLD):
            parts[rank].append(d2l.blockwise_attention(queries[rank], keys[rank], values[rank], causal=True,
                                                       offset=(rank - sources[rank]) * SHARD, block_size=4,
                                                       return_lse=True))
        # each device passes its shard on to the next: device r now holds what device r - 1 held
        keys = [keys[r - 1].as_in_ctx(devices[r]) for r in range(WORLD)]
        values = [values[r - 1].as_in_ctx(devices[r]) for r in range(WORLD)]
        sources = [sources[r - 1] for r in range(WORLD)]
    outputs = [d2l.merge_attention([o for o, _ in p], [s for _, s in p])[0] for p in parts]
    got = onp.concatenate([o.asnumpy() for o in outputs], axis=2)         # (b, heads, T, dv)
    mask = np.array(onp.tril(onp.ones((WORLD * SHARD, WORLD * SHARD), bool)))
    want = d2l.DotProductAttention()(*(np.array(x) for x in inputs), mask=mask)
    onp.testing.assert_allclose(got, want.asnumpy(), atol=1e-5)
