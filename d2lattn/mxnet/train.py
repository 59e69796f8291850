"""A small trainer: Adam, gradient clipping, a progress bar and the loss curve."""

from mxnet import autograd, gluon, npx
from tqdm.auto import tqdm

from d2lattn import _checks
from d2lattn.mxnet.ops import tensor
from d2lattn.mxnet.seq2seq import sequence_loss


def _fit(name, model, batches, batch_loss, epochs, lr, clip, progress):
    """Gluon's Adam on `batch_loss(batch of arrays)` for each batch, clipped to global norm
    `clip`; returns each epoch's mean batch loss, for plotting. Adam's epsilon is 1e-10, as
    Keras' is: d2lattn/tensorflow/train.py says why."""
    epochs = _checks.checked_positive_int("epochs", epochs)
    params = [p for p in model.collect_params().values() if p.grad_req != "null"]
    trainer = gluon.Trainer(params, "adam", {"learning_rate": lr, "epsilon": 1e-10})
    losses = []
    bar = tqdm(range(epochs), desc=name, unit="epoch", disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for batch in batches:
            with autograd.record():
                loss = batch_loss(*(tensor(a) for a in batch))
            loss.backward()
            grads = [p.grad().as_nd_ndarray() for p in params]              # legacy views: the clip takes those
            gluon.utils.clip_global_norm(grads, clip)                        # global norm over all parameters
            trainer.step(1)                                                  # the loss is already a mean
            total, count = total + float(loss), count + 1
        if not count:
            raise ValueError(f"{name}: `batches` gave no batch")
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def train_lm(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Next-token prediction on each NumPy batch (inputs, labels, valid_lens), with training=True."""
    def batch_loss(inputs, labels, valid_lens):
        logits, _ = model(inputs, training=True)                         # (b, T, vocab)
        return sequence_loss(logits, labels, valid_lens)
    return _fit("train_lm", model, batches, batch_loss, epochs, lr, clip, progress)


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Teacher forcing on each NumPy batch (src, src_valid_lens, dec_input, labels,
    label_valid_lens); the model runs with training=True."""
    def batch_loss(src, src_valid_lens, dec_input, labels, label_valid_lens):
        logits = model(src, dec_input, src_valid_lens, training=True)    # (b, T, vocab)
        return sequence_loss(logits, labels, label_valid_lens)
    return _fit("train_seq2seq", model, batches, batch_loss, epochs, lr, clip, progress)


def train_classifier(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Softmax cross-entropy on each NumPy batch (images (b, H, W, C), labels (b,)), with training=True."""
    def batch_loss(images, labels):
        _checks.check_class_labels(labels.shape, images.shape[0])
        logits = model(images.astype("float32"), training=True)          # (b, num_classes)
        log_p = npx.log_softmax(logits, axis=-1)                         # (b, num_classes)
        return -npx.pick(log_p, labels.astype("int32"), axis=-1).mean()
    return _fit("train_classifier", model, batches, batch_loss, epochs, lr, clip, progress)
