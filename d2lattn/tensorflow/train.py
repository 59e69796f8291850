"""Small trainers (a language model, Bahdanau's seq2seq): Adam, gradient clipping, a progress bar and the loss curve."""

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from d2lattn import _checks
from d2lattn.tensorflow.ops import _records_weights
from d2lattn.tensorflow.params import _submodules
from d2lattn.tensorflow.seq2seq import sequence_loss


def _fit(name, model, batches, loss, *, epochs, lr, clip, progress, check=None):
    """Adam with global-norm clipping on `loss(*batch)` for every NumPy batch, one tf.function per
    batch layout (tracing takes seconds; the batch size may vary), a tqdm bar; each epoch's mean loss.
    `check(*batch)` looks at each NumPy batch first, where its sizes are known (a trace leaves the batch None)."""
    epochs = _checks.checked_positive_int("epochs", epochs)
    # global_clipnorm: one norm over all gradients, as torch's clip_grad_norm_.
    # Adam's epsilon, for Keras here and Gluon in d2lattn/mxnet/train.py: both add it to sqrt(v)
    # before the bias correction, PyTorch and optax after it (no framework lets us choose). Added
    # before, eps acts as PyTorch's eps times sqrt(1 - beta_2 ** t), 0.03 at the first step and 0.3
    # after a hundred, so 1e-10 keeps it below PyTorch's 1e-8 through a short run; with 1e-8 it damps
    # the early steps of small gradients (the date language model stalls at 0.4-0.58 exact match,
    # where PyTorch reaches 0.95).
    optimizer = keras.optimizers.Adam(learning_rate=lr, epsilon=1e-10, global_clipnorm=clip)
    params = model.trainable_variables
    optimizer.build(params)  # the optimizer's slots exist before the step is traced

    def step(*batch):
        with tf.GradientTape() as tape:
            value = loss(*batch)
        # An embedding's gradient is IndexedSlices, one slice per occurrence of a token; Keras' global
        # norm squares them one by one (a sum of squares, not the square of the sum): made dense first.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(value, params)]
        optimizer.apply_gradients(zip(grads, params))
        return value

    traced = {}

    def train_step(batch):
        batch = [tf.convert_to_tensor(a) for a in batch]
        specs = tuple(tf.TensorSpec((None, *a.shape[1:]), a.dtype) for a in batch)
        if specs not in traced:
            traced[specs] = tf.function(step, input_signature=specs)
        return float(traced[specs](*batch))

    losses = []
    bar = tqdm(range(epochs), desc=name, unit="epoch", disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for batch in batches:
            if check is not None:
                check(*batch)
            total, count = total + train_step(batch), count + 1
        if not count:
            raise ValueError(f"{name}: `batches` gave no batch")
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    for _, layer in _submodules(model):  # weights from before training are stale: none until the next call
        if _records_weights(layer):
            layer.attention_weights = None
    return losses


def train_lm(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Next-token prediction on each NumPy batch (inputs (b, T), labels (b, T), valid_lens (b,));
    the model runs with training=True. Returns each epoch's mean batch loss, for plotting."""
    def loss(inputs, labels, valid_lens):
        logits, _ = model(inputs, training=True)                          # (b, T, vocab)
        return sequence_loss(logits, labels, valid_lens)

    return _fit("train_lm", model, batches, loss, epochs=epochs, lr=lr, clip=clip, progress=progress)


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Teacher forcing on each NumPy batch (src, src_valid_lens, dec_input, labels,
    label_valid_lens); the model runs with training=True. Returns each epoch's mean batch loss,
    for plotting."""
    def loss(src, src_valid_lens, dec_input, labels, label_valid_lens):
        logits = model(src, dec_input, src_valid_lens, training=True)      # (b, T, vocab)
        return sequence_loss(logits, labels, label_valid_lens)

    return _fit("train_seq2seq", model, batches, loss, epochs=epochs, lr=lr, clip=clip, progress=progress)


def train_classifier(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Softmax cross-entropy on each NumPy batch (images (b, H, W, C), labels (b,)); the model runs
    with training=True. Returns each epoch's mean batch loss, for plotting."""
    def loss(images, labels):
        logits = model(tf.cast(images, tf.float32), training=True)         # (b, num_classes)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits))

    def check(images, labels):
        _checks.check_class_labels(np.shape(labels), np.shape(images)[0])

    return _fit("train_classifier", model, batches, loss, epochs=epochs, lr=lr, clip=clip, progress=progress,
                check=check)
