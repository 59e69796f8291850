"""Timing helpers shared by every backend's benchmark.

Ours and the framework's own implementation run interleaved in one process
(ours, native, native, ours, ...), so drift in the machine's load hits both
alike; we report medians and the ratio ours / native.
"""

import statistics
import time

import numpy as np

from tests.native import weights

BATCH, HIDDEN, HEADS = 8, 256, 8
GQA_KV_HEADS = 2
TOKENS = (128, 512)


def inputs(tokens, seed=0):
    """(X (b, tokens, hidden) float32, key-padding lengths (b,) int32) from NumPy."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(BATCH, tokens, HIDDEN)).astype(np.float32)
    lens = rng.integers(tokens // 2, tokens + 1, size=BATCH).astype(np.int32)
    return X, lens


def mha_weights(bias):
    """Canonical MultiHeadAttention weights at the benchmark's size (tests/native/weights.py)."""
    return weights.mha_weights(bias, np.random.default_rng(1), HIDDEN)


def gqa_weights(params):
    """Grouped-query weights (GQA_KV_HEADS key/value heads) cut from mha_weights' (tests/native/weights.py)."""
    return weights.gqa_weights(params, GQA_KV_HEADS, HIDDEN, HEADS)


def compare(ours, native, *, sync=lambda out: out, repeats=30, warmup=3):
    """Median seconds of `ours()` and `native()`, interleaved; `sync` waits for a result."""
    for _ in range(warmup):
        sync(ours())
        sync(native())
    times = {"ours": [], "native": []}
    for i in range(repeats):
        order = (("ours", ours), ("native", native)) if i % 2 == 0 else (("native", native), ("ours", ours))
        for name, fn in order:
            start = time.perf_counter()
            sync(fn())
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["native"])


def report(title, rows):
    """Print one table: rows of (label, ours seconds, native seconds)."""
    print(f"\n{title}")
    print(f"{'case':<56} {'ours ms':>9} {'native ms':>10} {'ours/native':>12}")
    for label, ours, native in rows:
        print(f"{label:<56} {ours * 1e3:>9.2f} {native * 1e3:>10.2f} {ours / native:>12.2f}")


# --- generation with and without the K/V cache ------------------------------------

GEN_VOCAB, GEN_HIDDEN, GEN_HEADS, GEN_LAYERS = 64, 128, 4, 2
GEN_CONTEXTS, GEN_STEPS = (64, 256, 1024), 8


def per_token(d2l, model, prompt, use_cache, steps=GEN_STEPS, repeats=3):
    """Median seconds per generated token after `prompt`: generate(1 + steps) minus generate(1),
    so the prompt's own pass (the prefill, with the cache) cancels out. Both lengths run once
    first, so compiling (jax.jit, tf.function) is not timed."""
    def run(n):
        start = time.perf_counter()
        d2l.generate(model, prompt, n, use_cache=use_cache)
        return time.perf_counter() - start

    run(1), run(1 + steps)
    return statistics.median((run(1 + steps) - run(1)) / steps for _ in range(repeats))


def generation(d2l, how):
    """Greedy generation from a small TransformerLM, one sequence: seconds per new token at each
    context, with the cache (one position per step) and without (all positions again)."""
    model = d2l.TransformerLM(GEN_VOCAB, GEN_HIDDEN, GEN_HEADS, GEN_LAYERS, 2 * GEN_HIDDEN, num_kv_heads=2)
    rng = np.random.default_rng(0)
    print(f"\nGeneration: TransformerLM({GEN_LAYERS} layers, hidden {GEN_HIDDEN}, {GEN_HEADS} heads, 2 kv heads), "
          f"batch 1, {how}, {GEN_STEPS} new tokens per timing")
    print(f"{'context':>8} {'cached ms/token':>16} {'uncached ms/token':>18} {'cached tok/s':>13} "
          f"{'uncached tok/s':>15}")
    for context in GEN_CONTEXTS:
        prompt = rng.integers(0, GEN_VOCAB, (1, context)).astype(np.int32)
        cached, uncached = per_token(d2l, model, prompt, True), per_token(d2l, model, prompt, False)
        print(f"{context:>8} {cached * 1e3:>16.2f} {uncached * 1e3:>18.2f} {1 / cached:>13.0f} {1 / uncached:>15.0f}")
