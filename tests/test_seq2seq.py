"""Sequence to sequence on the backend under test: the loss, greedy decoding, GRU
parameters, and the quality bar: Bahdanau's model trained on the date task."""

import math
import time

import numpy as np
import pytest

from d2lattn import numpy as reference
from d2lattn.data import Seq2SeqData, date_pairs

# The quality bar: measured on torch (CPU, one thread) at 0.982-0.998 held-out exact
# match over four seeds in 8-14 s; the bar leaves room for other frameworks' numerics.
NUM_TRAIN, NUM_VAL, EMBED, HIDDEN, BATCH, EPOCHS, LR = 2000, 500, 16, 32, 128, 15, 0.01
MIN_ACCURACY = 0.9
SRC_STEPS, TGT_STEPS = 22, 11  # "wed 25 september 2000" + <eos>; "2000-09-25" + <eos>


def portable_init(d2l, model, seed, num_hiddens):
    """The same starting weights on every backend, drawn by NumPy: embeddings N(0, 1), the rest
    uniform in +-1/sqrt(num_hiddens) (PyTorch's defaults for these layers)."""
    rng = np.random.default_rng(seed)
    bound = 1 / math.sqrt(num_hiddens)
    params = {name: rng.normal(size=p.shape) if name.endswith("embedding") else rng.uniform(-bound, bound, p.shape)
              for name, p in sorted(d2l.get_params(model).items())}
    d2l.set_params(model, params)
    return params


def test_sequence_loss_averages_over_valid_tokens(d2l):
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(3, 4, 5)) * 3, rng.integers(0, 5, (3, 4))
    lens = np.array([2, 0, 9])  # none of the second sequence; all of the third (9 > 4)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]   # (3, 4)
    want = (nll[0, :2].sum() + nll[2].sum()) / 6
    got = d2l.sequence_loss(d2l.tensor(logits), d2l.tensor(labels.astype(np.int32)), d2l.tensor(lens.astype(np.int32)))
    assert abs(float(d2l.to_numpy(got)) - want) < 1e-5
    none = d2l.sequence_loss(d2l.tensor(logits), d2l.tensor(labels.astype(np.int32)), d2l.tensor(np.zeros(3, np.int32)))
    assert float(d2l.to_numpy(none)) == 0.0  # nothing to average: zero, not NaN


def _models(d2l, seed, **sizes):
    """The same random weights in the backend's model and the reference's."""
    ours, ref = d2l.Seq2Seq(**sizes), reference.Seq2Seq(**sizes)
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(size=p.shape) for n, p in sorted(reference.get_params(ref).items())}
    d2l.set_params(ours, params)
    reference.set_params(ref, params)
    return ours, ref


def test_greedy_decode_stops_at_eos(d2l):
    sizes = {"src_vocab_size": 7, "tgt_vocab_size": 6, "embed_size": 4, "num_hiddens": 5, "num_layers": 2}
    ours, ref = _models(d2l, 1, **sizes)
    src, valid_len, bos = np.array([3, 1, 4, 1, 5, 0], dtype=np.int32), 4, 1
    free, _ = reference.greedy_decode(ref, src, valid_len, bos, eos=-1, num_steps=8)  # never stops
    stop = next(i for i in range(2, 8) if free[i] not in free[:i])  # a token first seen at step >= 2
    eos = free[stop]
    for model, backend in ((ref, reference), (ours, d2l)):
        tokens, attention = backend.greedy_decode(model, src, valid_len, bos, eos, num_steps=8)
        assert tokens == free[:stop]                             # up to eos, without it
        assert attention.shape == (stop + 1, len(src))            # a row per step, the eos step included
        assert isinstance(attention, np.ndarray)
        np.testing.assert_allclose(attention.sum(1), 1, atol=1e-5)
        assert not attention[:, valid_len:].any()                 # padding gets no attention
    tokens, attention = d2l.greedy_decode(ours, src, valid_len, bos, eos=-1, num_steps=3)
    assert tokens == free[:3] and attention.shape == (3, len(src))  # no eos: num_steps tokens


def test_gru_canonical_round_trip(d2l):
    gru = d2l.GRU(3, 4, num_layers=2)
    names = ["W_xr", "W_xz", "W_xh", "W_hr", "W_hz", "W_hh", "b_r", "b_z", "b_xh", "b_hh"]
    shapes = {f"l{i}.{n}": (4,) if n.startswith("b") else (3 if i == 0 and n.startswith("W_x") else 4, 4)
              for i in range(2) for n in names}
    assert {n: p.shape for n, p in d2l.get_params(gru).items()} == shapes
    rng = np.random.default_rng(1)
    params = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    d2l.set_params(gru, params)
    got = d2l.get_params(gru)
    for n in params:
        np.testing.assert_array_equal(got[n], params[n], err_msg=n)
    X, state = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 2, 4))
    ref = reference.GRU(3, 4, num_layers=2)
    reference.set_params(ref, params)
    for ours, want in zip(gru(d2l.tensor(X), d2l.tensor(state), training=False), ref(X, state)):
        np.testing.assert_allclose(d2l.to_numpy(ours), want, atol=1e-5)
    zeros = gru(d2l.tensor(X), d2l.zeros((2, 2, 4)), training=False)[0]
    np.testing.assert_allclose(d2l.to_numpy(gru(d2l.tensor(X), training=False)[0]), d2l.to_numpy(zeros), atol=1e-6)


def test_gru_dropout_acts_between_layers_in_training_only(d2l, backend_name):
    gru, ref = d2l.GRU(3, 4, num_layers=2, dropout=0.5), reference.GRU(3, 4, num_layers=2, dropout=0.5)
    reference.set_params(ref, d2l.get_params(gru))
    X = np.random.default_rng(2).normal(size=(2, 5, 3))
    evaluation = d2l.to_numpy(gru(d2l.tensor(X), training=False)[0])
    np.testing.assert_allclose(evaluation, ref(X, training=False)[0], atol=1e-5)
    if backend_name == "numpy":  # forward-only and deterministic: it refuses to drop out
        with pytest.raises(ValueError, match="cannot apply dropout"):
            ref(X, training=True)
    else:
        assert not np.allclose(d2l.to_numpy(gru(d2l.tensor(X), training=True)[0]), evaluation)
    np.testing.assert_allclose(d2l.to_numpy(gru(d2l.tensor(X), training=False)[0]), evaluation, atol=1e-6)


def test_train_seq2seq_arguments(d2l, backend_name):
    model = d2l.Seq2Seq(5, 5, 2, 3)
    portable_init(d2l, model, seed=0, num_hiddens=3)
    batch = (np.ones((2, 3), np.int32), np.array([3, 1], np.int32), np.ones((2, 2), np.int32),
             np.ones((2, 2), np.int32), np.array([2, 1], np.int32))
    if backend_name == "numpy":
        with pytest.raises(ValueError, match="forward-only"):
            d2l.train_seq2seq(model, [batch], epochs=2, progress=False)
        return
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        d2l.train_seq2seq(model, [batch], epochs=0)
    with pytest.raises(ValueError, match="gave no batch"):
        d2l.train_seq2seq(model, [], epochs=1, progress=False)
    losses = d2l.train_seq2seq(model, [batch, batch], epochs=3, progress=True)  # the bar goes to stderr
    assert len(losses) == 3 and all(isinstance(x, float) for x in losses) and losses[-1] < losses[0]


def test_seq2seq_canonical_names(d2l):
    names = sorted(d2l.get_params(d2l.Seq2Seq(7, 6, 4, 5)))
    assert names == sorted(reference.get_params(reference.Seq2Seq(7, 6, 4, 5)))
    assert {"encoder.embedding", "encoder.rnn.l0.W_xr", "decoder.embedding", "decoder.attention.W_q",
            "decoder.rnn.l0.b_hh", "decoder.W_out", "decoder.b_out"} <= set(names)
    assert d2l.get_params(d2l.Seq2Seq(7, 6, 4, 5))["decoder.rnn.l0.W_xz"].shape == (5 + 4, 5)  # [context; embedding]


def test_attention_weights_cover_valid_source_positions(d2l):
    ours, _ = _models(d2l, 2, src_vocab_size=7, tgt_vocab_size=6, embed_size=4, num_hiddens=5)
    src, tgt = np.random.default_rng(3).integers(0, 6, (2, 6)), np.ones((2, 3))
    ours(d2l.tensor(src.astype(np.int32)), d2l.tensor(tgt.astype(np.int32)), d2l.tensor(np.array([2, 6], np.int32)),
         training=False)
    weights = d2l.to_numpy(ours.attention_weights)
    assert weights.shape == (2, 3, 6)
    assert not weights[0, :, 2:].any()
    np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def dates():
    return Seq2SeqData(date_pairs(NUM_TRAIN + NUM_VAL, seed=0), num_steps=(SRC_STEPS, TGT_STEPS),
                       batch_size=BATCH, level="char", num_val=NUM_VAL)


def _translate(d2l, model, data, source):
    src, src_len, *_ = data.build([source], ["?"])
    tokens, attention = d2l.greedy_decode(model, src[0], src_len[0], data.tgt_vocab.bos, data.tgt_vocab.eos,
                                          TGT_STEPS)
    return data.decode(tokens), attention


# The fields of "1996-03-05" (output steps) and where each is written in a source: its characters
# and the one after them, where a left-to-right encoder has read the whole field ("<eos>" at the end).
# Four-digit years only: a two-digit year leaves the century to inference, and a near tie there
# (e.g. 0.50 against 0.47 for "1966" over "1996" on one framework) says nothing about alignment.
FIELDS = {"year": range(0, 4), "month": range(5, 7), "day": range(8, 10)}
SPANS = {
    "5 march 1996": {"day": (0, 1), "month": (2, 7), "year": (8, 12)},
    "march 5, 1996": {"month": (0, 5), "day": (6, 7), "year": (9, 13)},
    "05.03.1996": {"day": (0, 2), "month": (3, 5), "year": (6, 10)},
}


def test_bahdanau_model_learns_dates(d2l, backend_name, dates):
    """From the same NumPy-drawn weights and batches on every backend, train and check held-out
    exact match, the loss curve, and that attention follows each field wherever the format puts it."""
    model = d2l.Seq2Seq(len(dates.src_vocab), len(dates.tgt_vocab), EMBED, HIDDEN)
    portable_init(d2l, model, seed=0, num_hiddens=HIDDEN)
    if backend_name == "numpy":
        # The reference is forward-only: it must refuse to train, clearly, not pretend to.
        with pytest.raises(ValueError, match="forward-only"):
            d2l.train_seq2seq(model, dates.train, epochs=EPOCHS, lr=LR, progress=False)
        return
    start = time.perf_counter()
    losses = d2l.train_seq2seq(model, dates.train, epochs=EPOCHS, lr=LR, progress=False)
    seconds = time.perf_counter() - start
    assert len(losses) == EPOCHS and losses[-1] < 0.1 < losses[0], losses
    correct = sum(_translate(d2l, model, dates, source)[0] == target for source, target in dates.val_pairs)
    accuracy = correct / NUM_VAL
    print(f"\n{backend_name}: {EPOCHS} epochs in {seconds:.1f} s, held-out exact match {accuracy:.3f}, "
          f"losses {[round(x, 3) for x in losses]}")
    assert accuracy >= MIN_ACCURACY, f"held-out exact match {accuracy:.3f} < {MIN_ACCURACY} after {seconds:.0f} s"
    for source, spans in SPANS.items():
        translation, attention = _translate(d2l, model, dates, source)
        assert translation == "1996-03-05", source
        for field, steps in FIELDS.items():
            peak = attention[list(steps)].sum(0).argmax()  # the source position the field looks at most
            low, high = spans[field]
            assert low <= peak <= high, f"{source!r}: the {field} attends to position {peak}, not {low}-{high}"


@pytest.mark.parametrize("call, message", [
    (lambda d2l: d2l.GRU(3, 4)(d2l.tensor(np.zeros((2, 5, 2)))), r"X must have shape \(batch, steps, input_size=3\)"),
    (lambda d2l: d2l.GRU(3, 4, 2)(d2l.tensor(np.zeros((2, 5, 3))), d2l.tensor(np.zeros((1, 2, 4)))),
     r"state must have shape \(num_layers, batch, num_hiddens\) = \(2, 2, 4\), got \(1, 2, 4\)"),
    (lambda d2l: d2l.Seq2SeqEncoder(5, 3, 4)(d2l.tensor(np.zeros((2, 5, 1), np.int32))),
     r"X must be token ids of shape \(batch, steps\), got \(2, 5, 1\)"),
])
def test_recurrent_inputs_are_checked(d2l, call, message):
    with pytest.raises(ValueError, match=message):
        call(d2l)
