"""Training: not in the reference."""


def train_lm(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Always raises ValueError, like train_seq2seq: train on a framework backend, then
    load the weights here (set_params or load_params)."""
    raise ValueError("train_lm: the NumPy reference backend is forward-only (no autodiff) and cannot train; "
                     "train on a framework backend (e.g. D2LATTN_BACKEND=torch) and load the trained weights "
                     "here with load_params or set_params")


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Always raises ValueError: the NumPy reference is forward-only, with no autodiff
    to train with. Train on a framework backend, then load its weights here with
    `set_params` to check them against the reference."""
    raise ValueError("train_seq2seq: the NumPy reference backend is forward-only (no autodiff) and cannot train; "
                     "train on a framework backend (e.g. D2LATTN_BACKEND=torch) and load the trained weights "
                     "here with set_params")


def train_classifier(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Always raises ValueError, like train_lm: train on a framework backend, then load the
    weights here (set_params or load_params)."""
    raise ValueError("train_classifier: the NumPy reference backend is forward-only (no autodiff) and cannot "
                     "train; train on a framework backend (e.g. D2LATTN_BACKEND=torch) and load the trained "
                     "weights here with load_params or set_params")
