"""Timing helpers shared by every backend's benchmark.

Ours and the framework's own implementation run interleaved in one process
(ours, native, native, ours, ...), so drift in the machine's load hits both
alike; we report medians and the ratio ours / native.
"""

import statistics
import time

import numpy as np

BATCH, HIDDEN, HEADS = 8, 256, 8
TOKENS = (128, 512)


def inputs(tokens, seed=0):
    """(X (b, tokens, hidden) float32, key-padding lengths (b,) int32) from NumPy."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(BATCH, tokens, HIDDEN)).astype(np.float32)
    lens = rng.integers(tokens // 2, tokens + 1, size=BATCH).astype(np.int32)
    return X, lens


def mha_weights(bias, rng=None, hidden=HIDDEN):
    """Canonical MultiHeadAttention weights (W (in, out)) drawn by NumPy, uniform in +-1/sqrt(hidden);
    the native-parity tests use them too."""
    rng = np.random.default_rng(1) if rng is None else rng
    scale = 1 / np.sqrt(hidden)
    params = {f"W_{x}": rng.uniform(-scale, scale, (hidden, hidden)).astype(np.float32) for x in "qkvo"}
    if bias:
        params.update({f"b_{x}": rng.uniform(-scale, scale, hidden).astype(np.float32) for x in "qkvo"})
    return params


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
