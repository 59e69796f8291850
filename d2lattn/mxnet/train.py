"""A small trainer: Adam, gradient clipping, a progress bar and the loss curve."""

from mxnet import autograd, gluon
from tqdm.auto import tqdm

from d2lattn import _checks
from d2lattn.mxnet.ops import tensor
from d2lattn.mxnet.seq2seq import sequence_loss


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Teacher forcing on each NumPy batch (src, src_valid_lens, dec_input, labels,
    label_valid_lens); the model runs with training=True. Returns each epoch's mean
    batch loss, for plotting.

    Gluon's Adam adds epsilon to sqrt(v) before the bias correction (as Keras does),
    PyTorch's after it: from the same weights the first steps of parameters with tiny
    gradients differ, so the loss curves agree closely, not exactly, with PyTorch's."""
    epochs = _checks.positive_int("epochs", epochs)
    params = [p for p in model.collect_params().values() if p.grad_req != "null"]
    trainer = gluon.Trainer(params, "adam", {"learning_rate": lr})
    losses = []
    bar = tqdm(range(epochs), desc="train_seq2seq", unit="epoch", disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for batch in batches:
            src, src_valid_lens, dec_input, labels, label_valid_lens = (tensor(a) for a in batch)
            with autograd.record():
                logits = model(src, dec_input, src_valid_lens, training=True)  # (b, T, vocab)
                loss = sequence_loss(logits, labels, label_valid_lens)
            loss.backward()
            grads = [p.grad().as_nd_ndarray() for p in params]              # legacy views: the clip takes those
            gluon.utils.clip_global_norm(grads, clip)                        # global norm over all parameters
            trainer.step(1)                                                  # the loss is already a mean
            total, count = total + float(loss), count + 1
        if not count:
            raise ValueError("train_seq2seq: `batches` gave no batch")
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses
