"""Ring attention on torch.distributed: 4 local processes (gloo, 127.0.0.1 only), each holding one
shard of a causal sequence's queries, keys and values. The key/value shards travel around the ring
with point-to-point isend/irecv; each process attends to every shard as it passes, merges the
partial results with merge_attention, and checks its rows against full attention."""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from d2lattn import torch as d2l

WORLD, SHARD, SEED = 4, 6, 0


def sequence():
    """The whole causal sequence, the same in every process: (b, heads, T, d) queries, keys, values."""
    rng = np.random.default_rng(SEED)
    return [torch.tensor(rng.normal(size=(2, 3, WORLD * SHARD, 4)), dtype=torch.float32) for _ in range(3)]


def ring(rank, port):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback interface only
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        queries, keys, values = (x[..., rank * SHARD:(rank + 1) * SHARD, :].contiguous() for x in sequence())
        outputs, lses, source = [], [], rank  # `source`: whose keys and values this process holds now
        for step in range(WORLD):
            # queries sit at rank * SHARD + i, keys at source * SHARD + j: a causal offset between shards
            out, lse = d2l.blockwise_attention(queries, keys, values, causal=True, offset=(rank - source) * SHARD,
                                               block_size=4, return_lse=True)
            outputs.append(out)
            lses.append(lse)
            if step < WORLD - 1:  # pass the shard on to the next process, take the previous one's
                received = [torch.empty_like(keys), torch.empty_like(values)]
                requests = [dist.isend(keys, (rank + 1) % WORLD), dist.isend(values, (rank + 1) % WORLD),
                            dist.irecv(received[0], (rank - 1) % WORLD), dist.irecv(received[1], (rank - 1) % WORLD)]
                for request in requests:
                    request.wait()
                keys, values, source = *received, (source - 1) % WORLD
        out, lse = d2l.merge_attention(outputs, lses)
        queries_all, keys_all, values_all = sequence()
        want, want_lse = d2l.blockwise_attention(queries_all, keys_all, values_all, causal=True, return_lse=True)
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        dense = d2l.DotProductAttention()(queries_all, keys_all, values_all,
                                          mask=torch.ones(WORLD * SHARD, WORLD * SHARD, dtype=torch.bool).tril())
        torch.testing.assert_close(out, dense[..., rows, :], atol=1e-5, rtol=0)
        torch.testing.assert_close(out, want[..., rows, :], atol=1e-5, rtol=0)
        torch.testing.assert_close(lse, want_lse[..., rows], atol=1e-5, rtol=0)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ring_attention_on_gloo():
    """Forked processes start with torch already imported; start_processes joins every one and
    raises if any of them failed (an assertion included)."""
    mp.start_processes(ring, args=(free_port(),), nprocs=WORLD, join=True, start_method="fork")
