"""Linear attention and the gated delta rule at T = 4096: the chunked form against the recurrent one,
the same numbers computed two ways, on any backend.

The recurrent form takes T small steps (a (d_k, d_v) state update each); the chunked form takes
T / chunk_size steps of matrix products, parallel within each chunk. Each form runs in the
framework's compiled form where it has one (`compile`, from each bench_<backend>.py).

    python -m benchmarks.linear BACKEND        (each bench_<backend>.py calls `main`)
"""

import functools
import statistics
import sys
import time

import numpy as np

from d2lattn import _backend

BATCH, HEADS, T, DK, DV, CHUNK = 1, 4, 4096, 64, 64, 64


def seconds(d2l, fn, inputs, repeats=3, warmup=1):
    """Median seconds of one call (the output read back, so the work is done)."""
    for _ in range(warmup):
        d2l.to_numpy(fn(*inputs))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        d2l.to_numpy(fn(*inputs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(d2l, compile=lambda fn: fn, how="eager"):
    """Print one row per function: ms of the recurrent and the chunked form, and their ratio."""
    rng = np.random.default_rng(0)
    shape = (BATCH, HEADS, T)
    qkv = [d2l.tensor(rng.normal(size=(*shape, n)).astype(np.float32)) for n in (DK, DK, DV)]
    gates = [d2l.tensor(rng.uniform(0.9, 1.0, shape).astype(np.float32)),
             d2l.tensor(rng.uniform(0.0, 1.0, shape).astype(np.float32))]
    print(f"\nT = {T}, batch {BATCH}, {HEADS} heads, d_k = d_v = {DK}, chunks of {CHUNK}, {how}")
    print(f"{'function':<20} {'recurrent ms':>13} {'chunked ms':>11} {'chunked faster by':>18}")
    for name, inputs in (("linear_attention", qkv), ("gated_delta_rule", qkv + gates)):
        fn = getattr(d2l, name)
        times = [seconds(d2l, compile(functools.partial(fn, form=form, chunk_size=CHUNK)), inputs)
                 for form in ("recurrent", "chunked")]
        print(f"{name:<20} {1e3 * times[0]:>13.1f} {1e3 * times[1]:>11.1f} {times[0] / times[1]:>17.1f}x")


if __name__ == "__main__":
    main(_backend.load(sys.argv[1] if len(sys.argv) > 1 else _backend.selected()))
