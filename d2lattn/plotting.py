"""Backend-free figures: every backend's `show_heatmaps` is this one, fed NumPy arrays."""

import numpy as np


def show_heatmaps(matrices, xlabel, ylabel, titles=None, figsize=(2.5, 2.5), cmap="Reds"):
    """Draw a grid of heatmaps from a (rows, cols, q, k) array-like and return the figure.

    Native arrays of any backend are accepted (anything `np.asarray` can read,
    including arrays that take part in autodiff).
    """
    import matplotlib.pyplot as plt  # imported on use: the library itself needs no matplotlib
    from matplotlib.ticker import MaxNLocator

    matrices = _as_numpy(matrices)
    if matrices.ndim != 4:
        raise ValueError(f"matrices must have 4 axes (rows, cols, q, k), got shape {matrices.shape}")
    rows, cols = matrices.shape[:2]
    low, high = float(matrices.min()), float(matrices.max())
    fig, axes = plt.subplots(rows, cols, figsize=(figsize[0] * cols, figsize[1] * rows),
                             sharex=True, sharey=True, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            image = ax.imshow(matrices[i, j], cmap=cmap, vmin=min(0.0, low), vmax=high)  # one scale for all
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))              # positions are whole numbers
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if i == rows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if titles is not None:
                ax.set_title(titles[j], fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6)
    return fig


def _as_numpy(x):
    for method in ("detach", "asnumpy"):  # torch tensors that need grad, MXNet arrays
        if hasattr(x, method):
            x = getattr(x, method)()
    return np.asarray(x, dtype=float)
