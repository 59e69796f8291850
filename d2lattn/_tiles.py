"""Block masks, backend-free: which (query block, key block) tiles of a mask are empty, partial or full,
and the order flex_attention visits the tiles that are not empty.

Every backend's block_mask evaluates the mask_mod with its own arrays, one block of query rows at
a time, and hands the booleans here as NumPy; what comes back (a BlockMask) is plain NumPy too, the
same on every backend, so a figure or a test reads it without a framework.
"""

import dataclasses
import math

import numpy as np

from d2lattn import _checks

EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclasses.dataclass(frozen=True, eq=False)
class BlockMask:
    """kinds (query blocks, key blocks): EMPTY (nothing kept: never computed), PARTIAL (the mask is
    evaluated) or FULL (everything kept: the mask is not evaluated); the mask_mod it classifies, and the
    sizes it was evaluated at. batch_size / num_heads 1: the mask does not depend on that axis."""
    kinds: np.ndarray
    mask_mod: object
    num_queries: int
    num_keys: int
    block_size: int
    batch_size: int = 1
    num_heads: int = 1

    def __call__(self, b, h, q_idx, kv_idx):
        """A BlockMask is a mask_mod too: its own."""
        return self.mask_mod(b, h, q_idx, kv_idx)

    @property
    def fraction(self):
        """The fraction of tiles that are computed (partial or full)."""
        return float((self.kinds != EMPTY).mean()) if self.kinds.size else 0.0

    def __repr__(self):
        counts = {name: int((self.kinds == kind).sum()) for name, kind in
                  (("empty", EMPTY), ("partial", PARTIAL), ("full", FULL))}
        return (f"BlockMask({self.num_queries} queries x {self.num_keys} keys in blocks of {self.block_size}: "
                f"{counts['empty']} empty, {counts['partial']} partial, {counts['full']} full tiles)")


def num_blocks(size, block_size):
    return math.ceil(size / block_size)


def classify_rows(keep, block_size, num_keys):
    """keep (..., rows, k) booleans of one block of query rows -> kinds (key blocks,)."""
    keep = np.asarray(keep)
    _checks.check_mask_mod_result(keep.dtype)
    keep = np.broadcast_to(keep, np.broadcast_shapes(keep.shape, (1, num_keys)))
    keep = keep.reshape(-1, num_keys)                                          # (b * heads * rows, k)
    pad = -num_keys % block_size
    kept = np.pad(keep, [(0, 0), (0, pad)]).reshape(len(keep), -1, block_size)  # (rows, key blocks, kb)
    real = (np.arange(kept.shape[1] * block_size) < num_keys).reshape(1, -1, block_size)
    some, every = kept.any(axis=(0, 2)), (kept | ~real).all(axis=(0, 2))        # (key blocks,)
    return np.where(every, FULL, np.where(some, PARTIAL, EMPTY)).astype(np.int8)


def checked(block_mask, mask_mod, num_queries, num_keys, block_size, batch_size, num_heads):
    """The BlockMask flex_attention uses: the one given (checked against the call) or None to build."""
    if not isinstance(block_mask, BlockMask):
        return None
    want = (num_queries, num_keys, block_size)
    got = (block_mask.num_queries, block_mask.num_keys, block_mask.block_size)
    if got != want or block_mask.batch_size not in (1, batch_size) or block_mask.num_heads not in (1, num_heads):
        raise ValueError(_checks.block_mask_mismatch(got, (block_mask.batch_size, block_mask.num_heads),
                                                     want, (batch_size, num_heads)))
    return block_mask


_CACHE, _CACHED = {}, 64  # the block masks of the latest calls, by (mask_mod, sizes)


def cached(key, build):
    """build() once per key (a mask_mod function and the call's sizes): a model's layers call attention
    with the same mod again and again, and classifying its tiles costs O(q k) mask evaluations. A
    mask_mod is keyed by the function object, so a mod whose arrays change is built anew (document_mod)."""
    if key not in _CACHE:
        if len(_CACHE) >= _CACHED:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build()
    return _CACHE[key]


def pieces(kinds, block_size, num_queries, num_keys, max_width=None):
    """[(q_start, q_stop, [(k_start, k_stop, partial), ...]), ...]: the query blocks with something to
    attend to, each with the runs of key blocks it computes. Empty tiles are left out; neighbouring
    full tiles are joined into one run (one matrix product instead of several) of at most `max_width`
    keys; a partial tile is a run of its own, the only kind whose mask is evaluated."""
    max_width = max_width or max(block_size, num_queries)  # scores at once: at most max(q, kb) x kb, as before
    plan = []
    for i, row in enumerate(np.asarray(kinds).tolist()):  # Python ints: a compiler sees constants
        runs = []
        for j, kind in enumerate(row):
            start, stop = j * block_size, min((j + 1) * block_size, num_keys)
            if kind == EMPTY:
                continue
            last = runs[-1] if runs else None
            if (kind == FULL and last and not last[2] and last[1] == start
                    and stop - last[0] <= max_width):
                runs[-1] = (last[0], stop, False)
            else:
                runs.append((start, stop, kind == PARTIAL))
        if runs:
            plan.append((i * block_size, min((i + 1) * block_size, num_queries), runs))
    return plan


def segments(plan, max_width):
    """The plan of pieces() with each query block's neighbouring runs joined into segments of at most
    max_width keys, one matrix product and one softmax update each: [(q_start, q_stop, [(k_start,
    k_stop, the key ranges of its partial tiles), ...]), ...]. Only the partial ranges evaluate the mask.
    PyTorch's flex masks those ranges in place. Where scores are immutable (MXNet, TensorFlow), masking them
    means joining the segment's columns back together, a copy of all its scores: measured at T = 4096,
    causal/none went from 0.63 to 0.72-0.75 on MXNet and stayed 0.63-0.70 on compiled TensorFlow, so
    those backends compute each run on its own."""
    joined = []
    for q0, q1, runs in plan:
        row = []
        for k0, k1, partial in runs:
            if row and row[-1][1] == k0 and k1 - row[-1][0] <= max_width:
                start, _, ranges = row[-1]
                row[-1] = (start, k1, ranges + ((k0, k1),) * partial)
            else:
                row.append((k0, k1, ((k0, k1),) * partial))
        joined.append((q0, q1, row))
    return joined


@dataclasses.dataclass(frozen=True)
class Groups:
    """groups [(q_start, n, rows, segments), ...]: n neighbouring query blocks of `rows` rows each, the i-th
    starting i * step after q_start, whose segments (those of the first, as segments() gives them) are
    the same relative to their first row, so that one batched product computes them all."""
    step: int
    groups: list


def groups(plan, block_size, max_keys):
    """The plan of segments() as Groups of neighbouring query blocks with the same segments relative to
    their start (a sliding window's blocks, away from the edges), at most max_keys keys per segment over a
    group's blocks together."""
    def relative(q0, q1, segments):
        return q1 - q0, tuple((k0 - q0, k1 - q0, tuple((a - q0, b - q0) for a, b in partial))
                              for k0, k1, partial in segments)

    found, last = [], None                                              # last: the previous block's shape
    for q0, q1, segments in plan:
        shape, widest = relative(q0, q1, segments), max(k1 - k0 for k0, k1, _ in segments)
        if (shape == last and found[-1][0] + found[-1][1] * block_size == q0
                and (found[-1][1] + 1) * widest <= max_keys):
            found[-1][1] += 1
        else:
            found.append([q0, 1, q1 - q0, segments])
        last = shape
    return Groups(block_size, [tuple(group) for group in found])


def index(arange, lead, q_start, q_size, k_start, k_size, n=1, step=0):
    """b, h, q_idx, kv_idx, made with the backend's `arange(start, stop)`, shaped to broadcast against the
    scores (*lead, n, qb, kb) of n tiles, the i-th of them `i * step` rows and keys further on; h indexes
    axis 1 of 4-d inputs (0 for 3-d ones)."""
    rank = len(lead) + 3
    b = arange(0, lead[0]).reshape((-1,) + (1,) * (rank - 1))                            # (b, 1, .., 1)
    h = arange(0, lead[1] if rank > 4 else 1).reshape((1, -1) + (1,) * (rank - 2))       # (1, h, 1, ..)
    i, j = arange(q_start, q_start + q_size).reshape(-1, 1), arange(k_start, k_start + k_size)  # (qb, 1), (kb,)
    if n > 1:                                                                            # each tile shifted
        shift = (arange(0, n) * step).reshape(-1, 1, 1)                                  # (n, 1, 1)
        i, j = i + shift, j + shift
    i = i.reshape((1,) * (rank - 3) + (n, q_size, 1))                                    # (1, .., n, qb, 1)
    j = j.reshape((1,) * (rank - 3) + (n, 1, k_size))                                    # (1, .., n, 1, kb)
    return b, h, i, j


def tiles(kinds):
    """(query block, key block, partial) of every tile that is not empty, as int32 arrays."""
    i, j = np.nonzero(kinds != EMPTY)
    return i.astype(np.int32), j.astype(np.int32), (kinds[i, j] == PARTIAL).astype(np.int32)


def computed(kinds):
    """How many tiles are computed."""
    return int((np.asarray(kinds) != EMPTY).sum())
