"""Ring attention on torch.distributed: 4 local processes (gloo, 127.0.0.1 only), each holding two
chunks of a causal sequence's queries, keys and values in zigzag order (tests/distributed/zigzag.py:
one early chunk and one late, so the causal work is balanced). The key/value chunks travel around
the ring with point-to-point isend/irecv; each process attends its query chunks to the key chunks it
holds with flex_attention's causal_mod (a pair wholly above the diagonal is skipped, and so are the
empty tiles within a pair), merges the partial results with merge_attention, and checks its rows
against full attention; the tiles each computed are within 10% of each other."""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lattn import torch as d2l
from tests.distributed import zigzag

WORLD, CHUNK, BLOCK, SEED = 4, 8, 2, 0


def sequence():
    """The whole causal sequence, the same in every process: (b, heads, T, d) queries, keys, values."""
    rng = np.random.default_rng(SEED)
    return [torch.tensor(rng.normal(size=(2, 3, 2 * WORLD * CHUNK, 4)), dtype=torch.float32) for _ in range(3)]


def ring(rank, port, counts):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback interface only
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = torch.as_tensor(zigzag.positions(rank, WORLD, CHUNK))
        queries, keys, values = (x[..., rows, :].contiguous() for x in sequence())  # (b, heads, 2 CHUNK, d)
        parts, source, computed = [[], []], rank, 0  # `source`: whose keys and values this process holds now
        for step in range(WORLD):
            for a, c, offset in zigzag.pairs(rank, source, WORLD, CHUNK):
                q, k, v = (x[..., i * CHUNK:(i + 1) * CHUNK, :] for x, i in ((queries, a), (keys, c), (values, c)))
                blocks = d2l.block_mask(d2l.causal_mod(offset), CHUNK, CHUNK, BLOCK)
                parts[a].append(d2l.flex_attention(q, k, v, mask_mod=blocks, block_size=BLOCK, return_lse=True))
                computed += int((blocks.kinds != 0).sum())
            if step < WORLD - 1:  # pass the chunks on to the next process, take the previous one's
                received = [torch.empty_like(keys), torch.empty_like(values)]
                requests = [dist.isend(keys, (rank + 1) % WORLD), dist.isend(values, (rank + 1) % WORLD),
                            dist.irecv(received[0], (rank - 1) % WORLD), dist.irecv(received[1], (rank - 1) % WORLD)]
                for request in requests:
                    request.wait()
                keys, values, source = *received, (source - 1) % WORLD
        out = torch.cat([d2l.merge_attention([o for o, _ in p], [s for _, s in p])[0] for p in parts], -2)
        queries_all, keys_all, values_all = sequence()
        T = queries_all.shape[-2]
        dense = d2l.DotProductAttention()(queries_all, keys_all, values_all,
                                          mask=torch.ones(T, T, dtype=torch.bool).tril())
        torch.testing.assert_close(out, dense[..., rows, :], atol=1e-5, rtol=0)
        counts[rank] = computed
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ring_attention_on_gloo():
    """Forked processes start with torch already imported; start_processes joins every one and
    raises if any of them failed (an assertion included). Each reports the tiles it computed."""
    counts = mp.get_context("fork").Array("i", WORLD)
    mp.start_processes(ring, args=(free_port(), counts), nprocs=WORLD, join=True, start_method="fork")
    assert list(counts) == zigzag.tiles(WORLD, CHUNK, BLOCK)
    print("tiles computed per worker (zigzag):", list(counts), f"imbalance {zigzag.imbalance(list(counts)):.1%}")
    assert zigzag.imbalance(list(counts)) <= 0.10


def test_zigzag_balances_the_causal_work():
    """Counted from block masks: contiguous shards leave the last worker far more tiles than the first;
    zigzag keeps every worker within 10% of the others, for several sizes."""
    for world, chunk, block in ((4, 8, 2), (4, 64, 16), (8, 32, 8)):
        contiguous, balanced = zigzag.tiles(world, chunk, block, zigzag=False), zigzag.tiles(world, chunk, block)
        assert zigzag.imbalance(contiguous) > 1.0, contiguous
        assert zigzag.imbalance(balanced) <= 0.10, balanced
        assert sum(contiguous) == sum(balanced)  # the same causal work, shared out differently
