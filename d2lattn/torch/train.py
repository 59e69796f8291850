"""A small trainer: Adam, gradient clipping, a progress bar and the loss curve."""

import torch
from torch import nn
from tqdm.auto import tqdm

from d2lattn import _checks
from d2lattn.torch.seq2seq import sequence_loss


def train_seq2seq(model, batches, *, epochs, lr=0.005, clip=1.0, progress=True):
    """Teacher forcing on each NumPy batch (src, src_valid_lens, dec_input, labels,
    label_valid_lens); the model runs with training=True (its mode is left as it was).
    Returns each epoch's mean batch loss, for plotting."""
    epochs = _checks.positive_int("epochs", epochs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    losses = []
    bar = tqdm(range(epochs), desc="train_seq2seq", unit="epoch", disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for batch in batches:
            src, src_valid_lens, dec_input, labels, label_valid_lens = (torch.as_tensor(a, device=device)
                                                                        for a in batch)
            logits = model(src, dec_input, src_valid_lens, training=True)  # (b, T, vocab)
            loss = sequence_loss(logits, labels, label_valid_lens)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)            # global norm over all parameters
            optimizer.step()
            total, count = total + loss.item(), count + 1
        if not count:
            raise ValueError("train_seq2seq: `batches` gave no batch")
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses
