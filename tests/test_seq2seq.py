"""seq2seq: the GRU, Bahdanau's encoder-decoder, sequence_loss and greedy_decode on the backend under test.

Beyond the harness (tests/cases.py): the loss, greedy decoding, GRU and model parameters,
attention over the valid source, dropout and the training mode, and bad input. Training
(train_seq2seq and the quality bar on the date task) is in tests/test_train.py.
"""

import numpy as np
import pytest

from d2lattn import numpy as reference
from tests.modes import RATE, dropout_tests
from tests.support import bad_input_test


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


@pytest.mark.needs("dropout")
def test_gru_dropout_acts_between_layers_in_training_only(d2l):
    """Two layers: dropout between them changes the training output, never the evaluation one; one
    layer has no layer boundary, so its dropout changes nothing, even in training."""
    gru, ref = d2l.GRU(3, 4, num_layers=2, dropout=RATE), reference.GRU(3, 4, num_layers=2, dropout=RATE)
    reference.set_params(ref, d2l.get_params(gru))
    X = np.random.default_rng(2).normal(size=(2, 5, 3))
    evaluation = d2l.to_numpy(gru(d2l.tensor(X), training=False)[0])
    np.testing.assert_allclose(evaluation, ref(X, training=False)[0], atol=1e-5)
    assert not np.allclose(d2l.to_numpy(gru(d2l.tensor(X), training=True)[0]), evaluation)
    np.testing.assert_allclose(d2l.to_numpy(gru(d2l.tensor(X), training=False)[0]), evaluation, atol=1e-6)
    single = d2l.GRU(3, 4, num_layers=1, dropout=RATE)
    X = d2l.tensor(np.random.default_rng(0).normal(size=(2, 5, 3)))
    np.testing.assert_allclose(d2l.to_numpy(single(X, training=True)[0]), d2l.to_numpy(single(X, training=False)[0]),
                               atol=1e-6)


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


# --- dropout and the training mode ------------------------------------------------------------

test_evaluation_ignores_dropout, test_training_applies_dropout, test_training_is_refused = dropout_tests("seq2seq")


# --- bad input --------------------------------------------------------------------------------

BAD_INPUT = {
    "gru width": (lambda d2l: d2l.GRU(3, 4)(d2l.tensor(np.zeros((2, 5, 2)))), ValueError,
                  r"X must have shape \(batch, steps, input_size=3\)"),
    "gru state": (lambda d2l: d2l.GRU(3, 4, 2)(d2l.tensor(np.zeros((2, 5, 3))), d2l.tensor(np.zeros((1, 2, 4)))),
                  ValueError,
                  r"state must have shape \(num_layers, batch, num_hiddens\) = \(2, 2, 4\), got \(1, 2, 4\)"),
    "encoder tokens rank": (lambda d2l: d2l.Seq2SeqEncoder(5, 3, 4)(d2l.tensor(np.zeros((2, 5, 1), np.int32))),
                            ValueError, r"X must be token ids of shape \(batch, steps\), got \(2, 5, 1\)"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- the documented loss, and evaluation mode inside greedy_decode --------------------------------
# sequence_loss is the documented masked loss (computed here in NumPy, with padding that carries
# very different labels), and greedy_decode runs the model in evaluation mode whatever mode it
# was left in.


def test_sequence_loss_averages_over_the_valid_tokens_only(d2l):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)) * 3
    valid_lens = np.array([5, 2, 0], np.int32)
    labels = rng.integers(0, 7, (3, 5))
    padded = np.arange(5) >= valid_lens[:, None]
    labels[padded] = logits.argmin(-1)[padded]        # the least likely token: counting it costs much
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]            # (3, 5)
    expected = nll[~padded].mean()
    assert abs(nll.mean() - expected) > 1.0
    loss = d2l.sequence_loss(d2l.tensor(logits), d2l.tensor(labels.astype(np.int32)), d2l.tensor(valid_lens))
    np.testing.assert_allclose(float(d2l.to_numpy(loss)), expected, rtol=1e-5)


def random_seq2seq(d2l, dropout):
    model = d2l.Seq2Seq(11, 13, 6, 8, num_layers=2, dropout=dropout)
    draw = np.random.default_rng(1)
    d2l.set_params(model, {name: draw.normal(size=p.shape) for name, p in d2l.get_params(model).items()})
    return model


@pytest.mark.needs("dropout")
def test_greedy_decode_runs_the_model_in_evaluation_mode_whatever_mode_it_was_left_in(d2l, adapter):
    model = random_seq2seq(d2l, 0.5)
    src = np.array([4, 7, 3, 9, 5], np.int32)

    def decode():
        return d2l.greedy_decode(model, src, 4, 1, 2, 6)

    tokens, weights = adapter.run_left_in_mode(model, False, decode)
    left_training = adapter.run_left_in_mode(model, True, decode)
    assert left_training[0] == tokens
    np.testing.assert_allclose(left_training[1], weights, atol=1e-6)
    # and the mode it was left in would matter: in training the same model gives other logits
    args = [d2l.tensor(a) for a in (src[None], np.array([[1, 5, 6]], np.int32), np.array([4], np.int32))]
    train = d2l.to_numpy(adapter.call_in_mode(model, True, *args))
    evaluation = d2l.to_numpy(adapter.call_in_mode(model, False, *args))
    assert not np.allclose(train, evaluation, atol=1e-3)
