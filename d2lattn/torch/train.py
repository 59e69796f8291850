"""A small trainer: Adam, gradient clipping, a progress bar and the loss curve."""

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from d2lattn import _checks
from d2lattn.torch.ops import _threads_of_its_size
from d2lattn.torch.seq2seq import sequence_loss


def _fit(name, model, batches, batch_loss, epochs, lr, clip, progress):
    """Adam on `batch_loss(batch of tensors)` for each batch, clipped to global norm `clip`;
    returns each epoch's mean batch loss, for plotting."""
    epochs = _checks.checked_positive_int("epochs", epochs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    losses = []
    bar = tqdm(range(epochs), desc=name, unit="epoch", disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for batch in batches:
            loss = batch_loss(*(torch.as_tensor(a, device=device) for a in batch))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)            # global norm over all parameters
            optimizer.step()
            total, count = total + loss.item(), count + 1
        if not count:
            raise ValueError(f"{name}: `batches` gave no batch")
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


@_threads_of_its_size  # one thread for a small model (d2lattn/torch/ops.py)
def train_lm(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Next-token prediction on each NumPy batch (inputs, labels, valid_lens), with training=True."""
    def batch_loss(inputs, labels, valid_lens):
        logits, _ = model(inputs, training=True)                         # (b, T, vocab)
        return sequence_loss(logits, labels, valid_lens)
    return _fit("train_lm", model, batches, batch_loss, epochs, lr, clip, progress)


@_threads_of_its_size
def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Teacher forcing on each NumPy batch (src, src_valid_lens, dec_input, labels,
    label_valid_lens); the model runs with training=True (its mode is left as it was)."""
    def batch_loss(src, src_valid_lens, dec_input, labels, label_valid_lens):
        logits = model(src, dec_input, src_valid_lens, training=True)    # (b, T, vocab)
        return sequence_loss(logits, labels, label_valid_lens)
    return _fit("train_seq2seq", model, batches, batch_loss, epochs, lr, clip, progress)


def train_classifier(model, batches, *, epochs, lr=1e-3, clip=1.0, progress=True):
    """Softmax cross-entropy on each NumPy batch (images (b, H, W, C), labels (b,)), with training=True."""
    def batch_loss(images, labels):
        _checks.check_class_labels(labels.shape, images.shape[0])
        logits = model(images.float(), training=True)                  # (b, num_classes)
        return F.cross_entropy(logits, labels.long())
    return _fit("train_classifier", model, batches, batch_loss, epochs, lr, clip, progress)
