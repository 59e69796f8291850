"""train_lm and train_seq2seq: the loss they report is the documented masked loss, computed here
in NumPy on batches whose padding carries very different labels, and `lr`, `clip` and `epochs`
each change the training the documented way."""

import numpy as np
import pytest

pytestmark = pytest.mark.needs("training")

LR = 1e-3
rng = np.random.default_rng(0)
LENS = np.array([6, 4, 2, 1], np.int32)                     # padding after these, in labels (4, 6)
SRC, SRC_LENS = rng.integers(3, 11, (4, 5)).astype(np.int32), np.array([5, 3, 4, 2], np.int32)
INPUTS = rng.integers(3, 13, (4, 6)).astype(np.int32)
LABELS = rng.integers(3, 13, (4, 6)).astype(np.int32)
LABELS[np.arange(6) >= LENS[:, None]] = 0                   # the padding token, whatever the model predicts


def masked_loss(logits, labels, valid_lens):
    """Mean cross-entropy over the positions before each valid length, in float64."""
    logits = np.asarray(logits, np.float64)                                     # (b, T, vocab)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]             # (b, T)
    keep = np.arange(labels.shape[1]) < valid_lens[:, None]
    return (nll * keep).sum() / keep.sum()


def lm(d2l):
    return d2l.TransformerLM(13, 8, 2, 1, 12)


def seq2seq(d2l):
    return d2l.Seq2Seq(11, 13, 6, 8)


# each trainer: its model, its batch, and the model's logits on that batch in evaluation
TRAINERS = {
    "train_lm": (lm, (INPUTS, LABELS, LENS), lambda d2l, model: model(d2l.tensor(INPUTS), training=False)[0]),
    "train_seq2seq": (seq2seq, (SRC, SRC_LENS, INPUTS, LABELS, LENS),
                      lambda d2l, model: model(*map(d2l.tensor, (SRC, INPUTS, SRC_LENS)), training=False)),
}


def fit(d2l, trainer, start, **kwargs):
    """A fresh model at parameters `start`, trained on the one batch: (losses, parameters after, model)."""
    make, batch, _ = TRAINERS[trainer]
    model = make(d2l)
    d2l.set_params(model, start)
    losses = getattr(d2l, trainer)(model, [batch], progress=False, **kwargs)
    return losses, d2l.get_params(model), model


def start_and_loss(d2l, trainer):
    """Parameters drawn by NumPy (N(0, 1), norms' gains ones: confident, so that each position's
    loss differs) and the masked loss of the model at them."""
    make, _, logits = TRAINERS[trainer]
    model, draw = make(d2l), np.random.default_rng(1)
    start = {name: np.ones(p.shape) if name.endswith("gamma") else draw.normal(size=p.shape)
             for name, p in d2l.get_params(model).items()}
    d2l.set_params(model, start)
    return start, masked_loss(d2l.to_numpy(logits(d2l, model)), LABELS, LENS)


def steps(before, after):
    return {name: after[name].astype(np.float64) - before[name] for name in before}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_the_reported_loss_is_the_masked_loss(d2l, trainer):
    start, expected = start_and_loss(d2l, trainer)
    make, _, logits = TRAINERS[trainer]
    model = make(d2l)
    d2l.set_params(model, start)
    counted = masked_loss(d2l.to_numpy(logits(d2l, model)), LABELS, np.full(4, 6))
    assert abs(counted - expected) > 1e-3 * expected  # counting the padding would show, 100 times the tolerance
    losses, _, _ = fit(d2l, trainer, start, epochs=1, lr=LR)
    np.testing.assert_allclose(losses[0], expected, rtol=1e-5)  # one batch: the loss before its step


@pytest.mark.parametrize("trainer", TRAINERS)
def test_epochs_is_the_number_of_passes(d2l, trainer):
    start, _ = start_and_loss(d2l, trainer)
    two, _, _ = fit(d2l, trainer, start, epochs=2, lr=LR)
    one, after_one, model = fit(d2l, trainer, start, epochs=1, lr=LR)
    assert len(two) == 2 and len(one) == 1
    np.testing.assert_allclose(two[0], one[0], rtol=1e-6)
    # the second pass starts where one step left the model
    np.testing.assert_allclose(two[1], masked_loss(d2l.to_numpy(TRAINERS[trainer][2](d2l, model)), LABELS, LENS),
                               rtol=1e-5)
    assert two[1] < two[0]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_the_first_step_is_proportional_to_lr(d2l, trainer):
    """Adam's first step is lr * g / (|g| + eps) for every parameter: proportional to lr, at most lr
    (2 lr for a canonical bias that is the sum of two of the framework's, as PyTorch's GRU gates')."""
    start, _ = start_and_loss(d2l, trainer)
    small = steps(start, fit(d2l, trainer, start, epochs=1, lr=LR, clip=1e6)[1])
    large = steps(start, fit(d2l, trainer, start, epochs=1, lr=3 * LR, clip=1e6)[1])
    biggest = max(np.abs(s).max() for s in small.values())
    assert 0.5 * LR < biggest < 2.01 * LR
    for name in small:
        np.testing.assert_allclose(large[name], 3 * small[name], atol=3e-6, err_msg=name)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_clip_bounds_the_gradient(d2l, trainer):
    """Clipped to a global norm of 1e-13, every gradient is far below Adam's epsilon, so the first
    step is a small fraction of lr; unclipped, the largest entries move by about lr."""
    start, _ = start_and_loss(d2l, trainer)
    clipped = steps(start, fit(d2l, trainer, start, epochs=1, lr=LR, clip=1e-13)[1])
    assert max(np.abs(s).max() for s in clipped.values()) < 0.1 * LR
    free = steps(start, fit(d2l, trainer, start, epochs=1, lr=LR, clip=1e6)[1])
    assert max(np.abs(s).max() for s in free.values()) > 0.5 * LR


@pytest.mark.parametrize("trainer", TRAINERS)
def test_bad_epochs_and_no_batches_are_refused(d2l, trainer):
    make, batch, _ = TRAINERS[trainer]
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        getattr(d2l, trainer)(make(d2l), [batch], epochs=0, progress=False)
    with pytest.raises(ValueError, match=f"{trainer}: `batches` gave no batch"):
        getattr(d2l, trainer)(make(d2l), [], epochs=1, progress=False)
