"""A small trainer: Adam, gradient clipping, a progress bar and the loss curve."""

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from d2lattn import _checks
from d2lattn.jax.attention import _forget_weights
from d2lattn.jax.seq2seq import sequence_loss


@nnx.jit
def _train_step(model, optimizer, src, src_valid_lens, dec_input, labels, label_valid_lens):
    """One Adam step on one batch, compiled once per batch shape; returns the batch's loss."""

    def loss_fn(model):
        logits = model(src, dec_input, src_valid_lens, training=True)   # (b, T, vocab)
        return sequence_loss(logits, labels, label_valid_lens)

    loss, grads = nnx.value_and_grad(loss_fn)(model)                    # d/d every nnx.Param
    optimizer.update(model, grads)
    return loss


def _clipped_adam(learning_rate, clip):
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(learning_rate))


# One transformation for every call, its learning rate and clip held as arrays in each optimizer's
# state: the transformation is a static argument of the compiled step (nnx.jit), so a new chain per
# call would compile the step of the same model again on every call.
_ADAM = optax.inject_hyperparams(_clipped_adam)(learning_rate=0.0, clip=1.0)


def _padded(batch, rows, weight):
    """The NumPy arrays of `batch` grown to `rows` rows with copies of its own rows, whose entry in
    array number `weight` (their valid lengths; for a classifier, whose batches have no such array,
    weights of 1 appended) is set to 0. The step's loss counts a row by that entry, so its value and
    gradients are the batch's own, and every batch has the first one's shape: a short last batch
    would compile the step a second time."""
    batch = [np.asarray(a) for a in batch]
    n = len(batch[0])
    if weight == len(batch):
        batch.append(np.ones(n, np.float32))                            # (n,)
    if n >= rows or any(len(a) != n for a in batch):                   # rows that do not match: the
        return batch                                                    # step's own checks say so
    take = np.arange(rows) % n                                          # (rows,) real rows, then copies
    grown = [a[take] for a in batch]
    grown[weight] = np.where(np.arange(rows) < n, grown[weight], 0).astype(grown[weight].dtype)
    return grown


def _fit(name, model, step, batches, *, epochs, lr, clip, progress, weight):
    """The loop the trainers share: optax Adam after global-norm clipping, `step` (an nnx.jit
    function of the model, the optimizer and one batch) on every batch, short ones padded (see
    _padded; `weight` names the array that counts rows), the mean loss per epoch."""
    epochs = _checks.checked_positive_int("epochs", epochs)
    optimizer = nnx.Optimizer(model, _ADAM, wrt=nnx.Param)
    for hyperparameter, value in (("learning_rate", lr), ("clip", clip)):
        optimizer.opt_state.hyperparams[hyperparameter].set_value(jnp.asarray(value, jnp.float32))
    losses, rows = [], 0
    bar = tqdm(range(epochs), desc=name, unit="epoch", disable=not progress)
    for _ in bar:
        batch_losses = []
        for batch in batches:
            rows = max(rows, len(batch[0]))
            _forget_weights(model)                                      # one compilation per batch shape
            batch = _padded(batch, rows, weight)
            batch_losses.append(step(model, optimizer, *(jnp.asarray(a) for a in batch)))  # read at the end:
        if not batch_losses:                                            # the steps run ahead of the loop
            raise ValueError(f"{name}: `batches` gave no batch")
        losses.append(sum(float(loss) for loss in batch_losses) / len(batch_losses))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


@nnx.jit
def _lm_step(model, optimizer, inputs, labels, valid_lens):
    """One Adam step of a language model on one batch (next-token prediction); returns its loss."""

    def loss_fn(model):
        logits, _ = model(inputs, training=True)                        # (b, T, vocab)
        return sequence_loss(logits, labels, valid_lens)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_lm(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Each NumPy batch (inputs, labels, valid_lens), the model run with training=True (its
    train/eval state is left as it was). Returns each epoch's mean batch loss."""
    return _fit("train_lm", model, _lm_step, batches, epochs=epochs, lr=lr, clip=clip, progress=progress,
                weight=2)


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Teacher forcing on each NumPy batch (src, src_valid_lens, dec_input, labels,
    label_valid_lens); the model runs with training=True (its train/eval state is left as
    it was). Returns each epoch's mean batch loss, for plotting."""
    return _fit("train_seq2seq", model, _train_step, batches, epochs=epochs, lr=lr, clip=clip,
                progress=progress, weight=4)


@nnx.jit
def _classifier_step(model, optimizer, images, labels, weights):
    """One Adam step of a classifier on one batch (softmax cross-entropy, each row counted by its
    weight: see _padded); returns its loss."""

    def loss_fn(model):
        _checks.check_class_labels(labels.shape, images.shape[0])      # shapes are static under jit
        logits = model(images, training=True)                           # (b, num_classes)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)   # (b,)
        return jnp.sum(nll * weights) / jnp.sum(weights)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_classifier(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Each NumPy batch (images (b, H, W, C), labels (b,)), the model run with training=True (its
    train/eval state is left as it was). Returns each epoch's mean batch loss."""
    return _fit("train_classifier", model, _classifier_step, batches, epochs=epochs, lr=lr, clip=clip,
                progress=progress, weight=2)
