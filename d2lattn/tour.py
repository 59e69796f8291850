"""A short tour of every component on the selected backend: `python -m d2lattn.tour [OUTDIR]`.

Prints each component's output shape and a few numbers, and writes attention
heatmaps as PNG files (default folder: build/tour/). Runs the same on every
backend: choose one with D2LATTN_BACKEND.
"""

import pathlib
import sys

import numpy as np

import d2lattn as d2l


def show(title, x):
    x = d2l.to_numpy(x)
    print(f"\n{title}: shape {x.shape}\n{np.array2string(x.reshape(-1, x.shape[-1])[:4], precision=3)}")


def main(outdir="build/tour"):
    import matplotlib

    matplotlib.use("Agg")
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"d2lattn tour on the {d2l.BACKEND} backend")

    scores = d2l.normal((2, 2, 4), seed=0)
    show("masked_softmax, valid_lens (2, 3): columns past each length get weight 0",
         d2l.masked_softmax(scores, d2l.tensor([2, 3])))
    show("masked_softmax, causal mask: query i sees keys 0..i",
         d2l.masked_softmax(d2l.normal((1, 4, 4), seed=1), mask=d2l.causal_mask(4)))

    queries, keys = d2l.normal((2, 1, 2), seed=2), d2l.ones((2, 10, 2))
    values = d2l.reshape(d2l.arange(40.0), (1, 10, 4)) * d2l.ones((2, 10, 4))
    lens = d2l.tensor([2, 6])
    additive = d2l.AdditiveAttention(2, 2, 8)
    show("AdditiveAttention (equal keys: uniform weights over the valid ones)",
         additive(queries, keys, values, lens, training=False))
    dot = d2l.DotProductAttention()
    show("DotProductAttention", dot(d2l.normal((2, 1, 2), seed=3), d2l.normal((2, 10, 2), seed=4), values, lens))

    X = d2l.normal((2, 6, 16), seed=5)
    mha = d2l.MultiHeadAttention(16, 4)
    show("MultiHeadAttention, 4 heads, self-attention", mha(X, X, X, d2l.tensor([6, 4]), training=False))

    pe = d2l.PositionalEncoding(32, max_len=60)
    show("PositionalEncoding table P[0, :4, :8]", pe.P[:, :4, :8])

    figures = {
        "additive-weights.png": d2l.show_heatmaps(
            d2l.reshape(additive.attention_weights, (1, 1, 2, 10)), "keys", "queries"),
        "mha-weights.png": d2l.show_heatmaps(
            d2l.swapaxes(mha.attention_weights, 0, 1), "keys", "queries", titles=["seq 0", "seq 1"]),
        "positional-encoding.png": d2l.show_heatmaps(
            d2l.reshape(pe.P, (1, 1, 60, 32)), "column (encoding dimension)", "row (position)", cmap="Blues"),
    }
    for name, figure in figures.items():
        figure.savefig(outdir / f"{d2l.BACKEND}-{name}", dpi=100, bbox_inches="tight")
    print(f"\nwrote {len(figures)} figures to {outdir}/ ({d2l.BACKEND}-*.png)")


if __name__ == "__main__":
    main(*sys.argv[1:])
