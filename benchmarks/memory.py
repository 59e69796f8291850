"""Peak memory and time of blockwise attention against dense attention, on any backend.

Memory: each measurement runs in a fresh Python process (the backend imported, the inputs made,
a small warm-up call run, glibc's allocator as it comes: no mmap threshold fixed, no tuning), which
reports the growth of its peak resident set size (resource.getrusage ru_maxrss) over that
baseline during one forward pass, or one forward and backward pass (d2l.value_and_grads), of
causal attention at T tokens (batch 1, one head, d = 64):
`blockwise_attention` against `DotProductAttention` with a causal mask. Time: in this process,
interleaved, blockwise against dense and against the framework's fused attention where it runs.

    python -m benchmarks.memory BACKEND [MAX_TOKENS]      (each bench_<backend>.py calls `main`)

Writes build/bench/memory_<backend>.md (the tables) and memory_<backend>.png (the plot).
"""

import functools
import json
import os
import pathlib
import re
import resource
import subprocess
import sys

import numpy as np

from benchmarks import common
from d2lattn import _backend

SIZES = (2048, 4096, 8192, 16384)
TIMED = (2048, 4096)           # time is measured at these sizes (dense at 16k takes long on a CPU)
D, BLOCK = 64, 128
OUT = pathlib.Path(__file__).resolve().parents[1] / "build" / "bench"


def causal_inputs(tokens, seed=0):
    """queries, keys, values (1, 1, T, d) float32 and a projection of the output, from NumPy."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 1, tokens, D)).astype(np.float32) for _ in range(4)]


def attention(d2l, kind, tokens):
    """(function, keyword arguments) measured: blockwise (its own causal flag) or dense
    (DotProductAttention, a module as value_and_grads takes it, with a causal mask)."""
    if kind == "blockwise":
        return functools.partial(d2l.blockwise_attention, causal=True, block_size=BLOCK), {}
    return d2l.DotProductAttention(), {"mask": d2l.causal_mask(tokens, tokens), "training": False}


def peak_rss_mb():
    """The process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind, passes, tokens):
    """Run in a fresh process: MB the peak RSS grew by during one call of `kind`."""
    import d2lattn as d2l

    q, k, v, projection = causal_inputs(tokens)
    warm = causal_inputs(64)
    fn, kwargs = attention(d2l, kind, 64)
    d2l.value_and_grads(fn, warm[:3], warm[3], **kwargs)  # loads kernels, allocators, tracers
    d2l.to_numpy(fn(*(d2l.tensor(x) for x in warm[:3]), **kwargs))
    fn, kwargs = attention(d2l, kind, tokens)
    tensors = [d2l.tensor(x) for x in (q, k, v)]
    base = peak_rss_mb()
    if passes == "forward":
        d2l.to_numpy(fn(*tensors, **kwargs))
    else:
        d2l.value_and_grads(fn, [q, k, v], projection, **kwargs)
    return peak_rss_mb() - base


def child(backend, kind, passes, tokens):
    """`measure` in a new interpreter; None where it failed (out of memory, say)."""
    # the default allocator, as a user gets it: no mallopt, no MALLOC_* tuning
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env["D2LATTN_BACKEND"] = backend
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", kind, passes, str(tokens)],
                          env=env, capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        print(f"{kind} {passes} T={tokens} failed:", done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(lines[-1])


def memory_table(backend, sizes):
    """{(kind, passes, tokens): MB or None}, each in its own process."""
    return {(kind, passes, t): child(backend, kind, passes, t)
            for t in sizes for passes in ("forward", "backward") for kind in ("dense", "blockwise")}


def timings(d2l, fused, sync, sizes):
    """Rows (label, blockwise s, other s): forward time against dense and against the fused kernel."""
    rows = []
    for tokens in sizes:
        q, k, v = (d2l.tensor(x) for x in causal_inputs(tokens)[:3])
        (blockwise, _), (module, kwargs) = attention(d2l, "blockwise", tokens), attention(d2l, "dense", tokens)
        dense = functools.partial(module, **kwargs)
        rows.append((f"causal T={tokens}, blockwise vs DotProductAttention",
                     *common.compare(lambda: blockwise(q, k, v), lambda: dense(q, k, v), sync=sync, repeats=3,
                                     warmup=1)))
        if fused is not None:
            rows.append((f"causal T={tokens}, blockwise vs fused", *common.compare(
                lambda: blockwise(q, k, v), lambda: fused(q, k, v), sync=sync, repeats=3, warmup=1)))
    return rows


def write(backend, table, sizes, rows, title):
    """Print and save the tables (markdown) and the plot (PNG) under build/bench/."""
    lines = [f"### {title}", "", "| T | pass | dense MB | blockwise MB | blockwise / dense |", "|---|---|---|---|---|"]
    for t in sizes:
        for passes in ("forward", "backward"):
            dense, block = table[("dense", passes, t)], table[("blockwise", passes, t)]
            ratio = f"{block / dense:.3f}" if dense and block is not None else "n/a"
            show = lambda mb: "failed" if mb is None else f"{mb:.0f}"  # noqa: E731
            lines.append(f"| {t} | {'forward' if passes == 'forward' else 'forward + backward'} | {show(dense)} | "
                         f"{show(block)} | {ratio} |")
    lines += ["", "| case | blockwise ms | other ms | blockwise / other |", "|---|---|---|---|"]
    lines += [f"| {label} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f} |" for label, a, b in rows]
    text = "\n".join(lines)
    print("\n" + text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"memory_{backend}.md").write_text(text + "\n")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind, style in (("dense", "o-"), ("blockwise", "s-")):
        for passes, dash in (("forward", ""), ("backward", "--")):
            points = [(t, table[(kind, passes, t)]) for t in sizes if table[(kind, passes, t)] is not None]
            if points:
                label = f"{kind}, {'forward' if passes == 'forward' else 'forward + backward'}"
                ax.plot(*zip(*points), style[0] + (dash or "-"), label=label)
    ax.set(xscale="log", yscale="log", xlabel="tokens T", ylabel="peak RSS growth (MB)", title=title)
    ax.set_xticks(sizes, [str(t) for t in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the measured sizes
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / f"memory_{backend}.png", dpi=120)


def summary(frameworks=_backend.FRAMEWORK_BACKENDS, path="docs/blockwise_memory.png"):
    """README's figure: every framework's measured table (build/bench/memory_<framework>.md), one
    panel each, dense against blockwise. `python -m benchmarks.memory --summary` after the benches."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(frameworks), figsize=(3 * len(frameworks), 3), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], frameworks):
        rows = re.findall(r"^\| (\d+) \| (forward(?: \+ backward)?) \| (\d+) \| (\d+) \|",
                          (OUT / f"memory_{name}.md").read_text(), re.M)
        for column, kind, marker in ((2, "dense", "o"), (3, "blockwise", "s")):
            for passes, dash in (("forward", "-"), ("forward + backward", "--")):
                points = [(int(r[0]), int(r[column])) for r in rows if r[1] == passes]
                ax.plot(*zip(*points), marker + dash, label=f"{kind}, {passes}")
        sizes = sorted({int(r[0]) for r in rows})
        ax.set(xscale="log", yscale="log", xlabel="tokens T", title=name)
        ax.set_xticks(sizes, [str(t) for t in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0, 0].set_ylabel("peak RSS growth (MB)")
    axes[0, -1].legend(fontsize=6)
    fig.suptitle("causal attention, batch 1, one head, d = 64", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(d2l, fused=None, sync=lambda out: out, max_tokens=None, title=None):
    """The whole benchmark for backend `d2l`: memory in fresh processes, then times here.
    `fused(q, k, v)`: the framework's own causal attention, or None where there is none."""
    sizes = tuple(t for t in SIZES if max_tokens is None or t <= max_tokens)
    table = memory_table(d2l.BACKEND, sizes)
    rows = timings(d2l, fused, sync, tuple(t for t in TIMED if t in sizes))
    write(d2l.BACKEND, table, sizes, rows, title or f"{d2l.BACKEND}: causal attention, batch 1, one head, d={D}")
    return table, rows


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary()
    elif sys.argv[1] == "--child":
        kind, passes, tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(json.dumps(measure(kind, passes, tokens)))
    else:
        os.environ["D2LATTN_BACKEND"] = sys.argv[1]
        import d2lattn

        main(d2lattn, max_tokens=int(sys.argv[2]) if len(sys.argv) > 2 else None)
