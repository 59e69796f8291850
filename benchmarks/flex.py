"""flex_attention's skipped tiles, measured: the time of a mask against the share of tiles it computes,
on any backend, interleaved in one process (`main(d2l)`, which each bench_<backend>.py calls).

- causal against no mask at T = 4096 (half the tiles: the bar is 0.6x);
- a window of 256 against full causal at T = 8192 (the bar is 0.15x);
- forward + backward (value_and_grads) of causal blockwise_attention against DotProductAttention with
  a causal mask at T = 2048 (the bar is 1.5x);
- time against the fraction of tiles computed, for causal, window, document and prefix-LM masks at
  T = 2048 (the chapter's figure).
Each mask's BlockMask is built once, as a model's layers reuse it (flex_attention caches it by mod);
its one-off cost is reported too. Batch 1, one head, d = 64, block 128. Writes build/bench/flex_<backend>.md.
A framework whose eager calls each cost a dispatch per tile (TensorFlow) is measured eagerly and in its
compiled form too (`compile` and `value_and_grads`, from its bench_<backend>.py), both sides alike.
"""

import functools
import time

import numpy as np

from benchmarks import common
from benchmarks.memory import OUT, causal_inputs

BLOCK = 128


def masks(d2l, tokens):
    """(name, mask_mod) of the masks the figure compares, at `tokens` positions."""
    docs = np.repeat(np.arange(8), tokens // 8).astype(np.int32)              # 8 packed documents
    return [("none", None), ("causal", d2l.causal_mod()), ("window 256", d2l.window_mod(256)),
            ("document", d2l.document_mod(d2l.tensor(docs))),
            ("document + causal", d2l.and_mods(d2l.document_mod(d2l.tensor(docs)), d2l.causal_mod())),
            ("prefix-LM 512", d2l.prefix_lm_mod(512))]


def flex(d2l, tokens, mask_mod, compile=lambda fn: fn):
    """A flex_attention call over the inputs of `tokens` positions with its BlockMask built, and the fraction."""
    q, k, v = (d2l.tensor(x) for x in causal_inputs(tokens)[:3])
    blocks = None if mask_mod is None else d2l.block_mask(mask_mod, tokens, tokens, BLOCK)
    fraction = 1.0 if blocks is None else blocks.fraction
    call = compile(lambda q, k, v: d2l.flex_attention(q, k, v, mask_mod=blocks, block_size=BLOCK))
    return (lambda: call(q, k, v)), fraction


def eager_grads(d2l, fn, **kwargs):
    """() -> d2l.value_and_grads of fn at the inputs: the forward, then the gradients of sum(out * projection)."""
    return lambda q, k, v, projection: d2l.value_and_grads(fn, [q, k, v], projection, **kwargs)


def ratios(d2l, sync, compile=lambda fn: fn, value_and_grads=eager_grads):
    """Rows (label, ours s, other s) for the three bars."""
    rows = []
    causal, _ = flex(d2l, 4096, d2l.causal_mod(), compile)
    full, _ = flex(d2l, 4096, None, compile)
    rows.append(("causal vs no mask, T=4096", *common.compare(causal, full, sync=sync, repeats=5, warmup=1)))
    window, _ = flex(d2l, 8192, d2l.window_mod(256), compile)
    causal, _ = flex(d2l, 8192, d2l.causal_mod(), compile)
    rows.append(("window 256 vs causal, T=8192", *common.compare(window, causal, sync=sync, repeats=5, warmup=1)))
    inputs = causal_inputs(2048)
    blockwise = value_and_grads(d2l, functools.partial(d2l.blockwise_attention, causal=True, block_size=BLOCK))
    dense = value_and_grads(d2l, d2l.DotProductAttention(), mask=d2l.causal_mask(2048, 2048), training=False)
    rows.append(("fwd+bwd blockwise vs DotProductAttention, causal, T=2048", *common.compare(
        lambda: blockwise(*inputs), lambda: dense(*inputs), sync=sync, repeats=5, warmup=1)))
    return rows


def by_fraction(d2l, sync, tokens=2048):
    """[(name, fraction of tiles computed, seconds)] at `tokens`, interleaved rounds, medians."""
    calls = [(name, *flex(d2l, tokens, mod)) for name, mod in masks(d2l, tokens)]
    times = {name: [] for name, _, _ in calls}
    for fn, _ in [(fn, f) for _, fn, f in calls]:
        sync(fn())                                                            # warm up
    for _ in range(3):
        for name, fn, _ in calls:
            start = time.perf_counter()
            sync(fn())
            times[name].append(time.perf_counter() - start)
    return [(name, fraction, float(np.median(times[name]))) for name, _, fraction in calls]


def classification_cost(d2l, tokens=8192):
    """Seconds to build one BlockMask (the window's) at `tokens`: paid once per mod and size."""
    start = time.perf_counter()
    d2l.block_mask(d2l.window_mod(256), tokens, tokens, BLOCK)
    return time.perf_counter() - start


def main(d2l, sync=lambda out: out, compiled=None):
    """compiled: (how, compile, value_and_grads) of the framework's compiled form, measured after the eager one."""
    rows = [("eager", row) for row in ratios(d2l, sync)]
    if compiled is not None:
        how, compile, value_and_grads = compiled
        rows += [(how, row) for row in ratios(d2l, sync, compile, value_and_grads)]
    points = by_fraction(d2l, sync)
    build = classification_cost(d2l)
    lines = [f"### {d2l.BACKEND}: flex_attention, batch 1, one head, d = 64, block {BLOCK}", "",
             "| case | called | ours ms | other ms | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {how} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f} |" for how, (label, a, b) in rows]
    lines += ["", "| mask, T=2048 | tiles computed | ms |", "|---|---|---|"]
    lines += [f"| {name} | {fraction:.3f} | {s * 1e3:.1f} |" for name, fraction, s in points]
    lines += ["", f"building the BlockMask of a window at T=8192 (once per mod and size): {build * 1e3:.0f} ms"]
    text = "\n".join(lines)
    print("\n" + text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"flex_{d2l.BACKEND}.md").write_text(text + "\n")
    return rows, points
