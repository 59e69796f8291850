"""Zigzag sharding for causal ring attention, backend-free.

The sequence is cut into 2 * world chunks; worker r holds chunks r and 2 * world - 1 - r (one early,
one late), so under a causal mask every worker has about the same number of (query, key) tiles to
compute, where contiguous shards give the last worker 2 * world - 1 times the first one's. At each
ring step a worker attends its two query chunks to the two key chunks it holds: a pair wholly above
the diagonal is skipped outright, and within a pair block_mask's empty tiles are skipped.
"""

import numpy as np

from d2lattn import numpy as reference


def chunks(rank, world, zigzag=True):
    """The chunk indices (of 2 * world) worker `rank` holds."""
    return (rank, 2 * world - 1 - rank) if zigzag else (2 * rank, 2 * rank + 1)


def pairs(rank, source, world, chunk, zigzag=True):
    """(query chunk i, key chunk j, causal offset) of each pair worker `rank` computes while it holds
    worker `source`'s keys: query chunk i against key chunk j sits at offset (i - j) * chunk; pairs
    with j > i are empty (every key after every query) and left out."""
    return [(a, c, (qc - kc) * chunk) for a, qc in enumerate(chunks(rank, world, zigzag))
            for c, kc in enumerate(chunks(source, world, zigzag)) if kc <= qc]


def tiles(world, chunk, block_size, zigzag=True):
    """The tiles each worker computes over the whole ring: block_mask's non-empty tiles of every pair."""
    counts = []
    for rank in range(world):
        total = 0
        for step in range(world):
            for _, _, offset in pairs(rank, (rank - step) % world, world, chunk, zigzag):
                kinds = reference.block_mask(reference.causal_mod(offset), chunk, chunk, block_size).kinds
                total += int((kinds != 0).sum())
        counts.append(total)
    return counts


def imbalance(counts):
    """The largest worker's count over the smallest's, minus one."""
    return max(counts) / min(counts) - 1


def positions(rank, world, chunk, zigzag=True):
    """The positions in the whole sequence of worker `rank`'s rows, in the order it holds them."""
    return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in chunks(rank, world, zigzag)])
