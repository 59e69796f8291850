"""sequence_loss is the documented masked loss (computed here in NumPy, with padding that carries
very different labels), and greedy_decode runs the model in evaluation mode whatever mode it
was left in."""

import numpy as np
import pytest


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
