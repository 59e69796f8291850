"""The same model trained in every framework, for crosscheck, and global-norm clipping.

Six Adam steps of a small TransformerLM (grouped-query heads, a window, RoPE, RMSNorm, SwiGLU)
from the same NumPy-drawn start on the same batches: each framework's session writes its
per-epoch losses and final parameters, and `nox -s crosscheck` compares every pair of frameworks
(the reference does not train, so no single-backend test can). Adam is configured alike
((0.9, 0.999), global-norm clipping at 1) but for one thing no framework lets us set: Keras and
Gluon add epsilon to sqrt(v) before the bias correction, PyTorch and optax after it (so Keras and
Gluon take epsilon 1e-10, the others 1e-8). Where a gradient is near epsilon that changes a step,
so crosscheck holds frameworks that place it alike to a tight tolerance and the two groups to a
looser one (TRAINING_TOLERANCE).

Bahdanau's model is not compared this way: JAX's GRU holds one bias per gate where PyTorch,
Keras and Gluon hold two that are summed, so in those three Adam moves the canonical r and z
biases about twice as fast as in JAX; a real difference of parameterization, stated in README.
"""

import numpy as np
import pytest

from tests import harness
from tests.test_seq2seq import portable_init

SIZES = {"src_vocab_size": 7, "tgt_vocab_size": 6, "embed_size": 4, "num_hiddens": 8, "num_layers": 2}
LM = {"vocab_size": 11, "num_hiddens": 16, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 24, "num_kv_heads": 2,
      "window": 5}
EPOCHS, LR = 3, 0.01


def lm_batches():
    """Two fixed batches of (inputs, labels, valid_lens): random tokens, labels shifted by one."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(2):
        tokens = rng.integers(0, LM["vocab_size"], (4, 9)).astype(np.int32)
        out.append((tokens[:, :-1], tokens[:, 1:], rng.integers(3, 9, 4).astype(np.int32)))
    return out


def batches():
    """Two fixed batches (src, src_valid_lens, dec_input, labels, label_valid_lens), int32."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(2):
        src, tgt = rng.integers(0, 7, (4, 5)), rng.integers(0, 6, (4, 5))
        out.append(tuple(np.asarray(a, dtype=np.int32) for a in (
            src, rng.integers(1, 6, 4), tgt[:, :-1], tgt[:, 1:], rng.integers(1, 5, 4))))
    return out


def trained(d2l, clip, epochs=EPOCHS, data=None):
    model = d2l.Seq2Seq(**SIZES)
    start = portable_init(d2l, model, seed=3, num_hiddens=SIZES["num_hiddens"])
    losses = d2l.train_seq2seq(model, data or batches(), epochs=epochs, lr=LR, clip=clip, progress=False)
    return start, losses, d2l.get_params(model)


def test_a_few_adam_steps_of_a_language_model_for_crosscheck(d2l, backend_name):
    model = d2l.TransformerLM(**LM)
    rng = np.random.default_rng(4)
    start = {n: rng.uniform(-0.5, 0.5, p.shape) for n, p in sorted(d2l.get_params(model).items())}
    d2l.set_params(model, start)
    if backend_name == "numpy":
        with pytest.raises(ValueError, match="forward-only"):
            d2l.train_lm(model, lm_batches(), epochs=EPOCHS, lr=LR, progress=False)
        return
    losses = d2l.train_lm(model, lm_batches(), epochs=EPOCHS, lr=LR, progress=False)
    params = d2l.get_params(model)
    assert losses[-1] < losses[0]
    harness.write_results(backend_name, {"lm-adam": {"loss": np.asarray(losses),
                                                     **{f"param:{n}": p for n, p in params.items()}}},
                          kind="training-lm")


def test_clipping_is_applied(d2l, backend_name):
    """Clipped to a global norm of 1e-15, a gradient is far below Adam's epsilon (>= 1e-10), so one
    step moves no weight by more than lr * 1e-4; unclipped, Adam's first step moves weights by
    about lr."""
    if backend_name == "numpy":
        return  # forward-only: test_a_few_adam_steps_for_crosscheck checks that it refuses to train
    one = batches()[:1]
    for clip, moved in ((1e-15, lambda d: d < LR * 1e-4), (1e9, lambda d: d > LR / 2)):
        start, _, params = trained(d2l, clip=clip, epochs=1, data=one)
        largest = max(np.abs(params[n] - start[n]).max() for n in params)
        assert moved(largest), f"clip={clip}: the largest weight moved by {largest:.2e}"
