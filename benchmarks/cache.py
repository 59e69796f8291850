"""What one attention layer caches per token, and what one generated token costs it, at long
contexts: multi-head (MHA), grouped-query (GQA) and multi-head latent attention (MLA, absorbed and
naive) and GatedDeltaNet (a state of constant size, so its bytes per token fall with the context),
same model width, on any backend.

Each layer gets a cache of `context` random positions, made directly in its own layout (a
prefill of 8k tokens would need the (8k, 8k) scores of every head), and is timed on one new token
against it: the call a generation step makes, in the framework's compiled form where it has one
(`compile`, from each bench_<backend>.py). A layer type with a state instead of a cache adds an
entry to LAYERS (name, constructor, cache maker).

    python -m benchmarks.cache BACKEND        (each bench_<backend>.py calls `main`)
"""

import statistics
import sys
import time

import numpy as np

from d2lattn import _backend

HIDDEN, HEADS, KV_HEADS = 512, 8, 2
HEAD = HIDDEN // HEADS
# DeepSeek-V3's proportions at this width: a latent of 4 heads' sizes, a rotary key of half a head.
MLA = {"kv_lora_rank": 4 * HEAD, "q_lora_rank": 3 * HEAD, "qk_nope_head_size": HEAD, "qk_rope_head_size": HEAD // 2,
       "v_head_size": HEAD}
CONTEXTS = (1024, 8192)


def _kv_cache(layer, context, rng, d2l):
    shape = (1, layer.num_kv_heads, context, layer.head_size)           # (b, kv_heads, t, dh)
    return tuple(d2l.tensor(rng.normal(size=shape).astype(np.float32)) for _ in range(2))


def _latent_cache(layer, context, rng, d2l):
    sizes = (MLA["kv_lora_rank"], MLA["qk_rope_head_size"])
    return tuple(d2l.tensor(rng.normal(size=(1, context, n)).astype(np.float32)) for n in sizes)  # (b, t, r), (.., dr)


def _state(layer, context, rng, d2l):
    """GatedDeltaNet's cache at any context: its convolution's last inputs and its state, constant in size."""
    conv, S = layer.empty_cache(d2l.tensor(np.zeros((1, 0, HIDDEN), np.float32)))
    return d2l.tensor(rng.normal(size=conv.shape).astype(np.float32)), d2l.tensor(
        rng.normal(size=S.shape).astype(np.float32))


# (name, the layer on backend d2l, its cache of `context` positions)
LAYERS = [
    ("MHA", lambda d2l: d2l.CausalSelfAttention(HIDDEN, HEADS), _kv_cache),
    (f"GQA ({KV_HEADS} kv heads)", lambda d2l: d2l.CausalSelfAttention(HIDDEN, HEADS, num_kv_heads=KV_HEADS),
     _kv_cache),
    ("MLA (absorbed)", lambda d2l: d2l.MultiHeadLatentAttention(HIDDEN, HEADS, **MLA, absorb=True), _latent_cache),
    ("MLA (naive)", lambda d2l: d2l.MultiHeadLatentAttention(HIDDEN, HEADS, **MLA), _latent_cache),
    ("GatedDeltaNet", lambda d2l: d2l.GatedDeltaNet(HIDDEN, HEADS), _state),
]


def cache_bytes(d2l, cache):
    return sum(d2l.to_numpy(x).nbytes for x in cache)


def seconds_per_token(d2l, step, x, cache, repeats=7, warmup=2):
    """Median seconds of one call `step(x, cache)` (the output read back, so the work is done)."""
    for _ in range(warmup):
        d2l.to_numpy(step(x, cache)[0])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        d2l.to_numpy(step(x, cache)[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(d2l, compile=lambda layer: lambda x, cache: layer(x, cache=cache, training=False), how="eager"):
    """Print one table: cache bytes per token and ms per generated token at each context."""
    rng = np.random.default_rng(0)
    x = d2l.tensor(rng.normal(size=(1, 1, HIDDEN)).astype(np.float32))  # the new token's input (b, 1, h)
    print(f"\nOne layer at hidden {HIDDEN}, {HEADS} heads of {HEAD}; MLA {MLA}; batch 1, one new token, {how}")
    print(f"{'layer':<20} {'cache B/token':>14} " + " ".join(f"{f'ms @ {c}':>11}" for c in CONTEXTS))
    for name, make, make_cache in LAYERS:
        layer = make(d2l)
        step, row = compile(layer), []
        for context in CONTEXTS:
            cache = make_cache(layer, context, rng, d2l)
            per_token = cache_bytes(d2l, cache) / context
            row.append(seconds_per_token(d2l, step, x, cache))
        print(f"{name:<20} {per_token:>14.0f} " + " ".join(f"{1e3 * s:>11.3f}" for s in row))


if __name__ == "__main__":
    main(_backend.load(sys.argv[1] if len(sys.argv) > 1 else _backend.selected()))
