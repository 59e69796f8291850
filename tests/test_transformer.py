"""transformer: TransformerEncoder, TransformerDecoder and beam_search on the backend under test.

Beyond the harness (tests/cases.py, which holds both against the reference, the decoder whole and
step by step): the embedding scale and positions, the parameter names, the attention weights,
the decoder in Seq2Seq (step by step equals the full pass, for random lengths), beam search
(beam_size=1 is greedy_decode for random models of both kinds; the reference's tokens and scores;
the exhaustive best with a wide beam; the length normalization), bad input, and the quality bar:
a Transformer trained on the date task from one NumPy-drawn start.
"""

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2lattn import numpy as reference
from d2lattn import sampling
from d2lattn.data import Seq2SeqData, date_pairs
from tests.support import bad_input_test, portable_transformer_init, random_params

SIZES = {"num_hiddens": 8, "ffn_num_hiddens": 12, "num_heads": 2, "num_blocks": 2}
SRC_VOCAB, TGT_VOCAB = 9, 7


def transformer(backend, seed, dropout=0.0):
    """A Seq2Seq Transformer of `backend` (a d2lattn backend module) with weights drawn by NumPy."""
    model = backend.Seq2Seq(encoder=backend.TransformerEncoder(SRC_VOCAB, **SIZES, dropout=dropout),
                            decoder=backend.TransformerDecoder(TGT_VOCAB, **SIZES, dropout=dropout))
    ref = reference.Seq2Seq(encoder=reference.TransformerEncoder(SRC_VOCAB, **SIZES),
                            decoder=reference.TransformerDecoder(TGT_VOCAB, **SIZES))
    backend.set_params(model, random_params(ref, np.random.default_rng(seed), scale=2.0))
    return model


def bahdanau(backend, seed):
    model = backend.Seq2Seq(SRC_VOCAB, TGT_VOCAB, 4, 6, num_layers=2)
    backend.set_params(model, random_params(reference.Seq2Seq(SRC_VOCAB, TGT_VOCAB, 4, 6, num_layers=2),
                                            np.random.default_rng(seed), scale=3.0))
    return model


MODELS = {"transformer": transformer, "bahdanau": bahdanau}


def ints(d2l, array):
    return d2l.tensor(np.asarray(array, dtype=np.int32))


# --- the parts -------------------------------------------------------------------------------------


def test_encoder_is_scaled_embeddings_positions_and_blocks(d2l):
    """The encoder's output, rebuilt from its children: embedding * sqrt(num_hiddens), plus the
    sinusoids, through each block in turn."""
    encoder = d2l.TransformerEncoder(SRC_VOCAB, **SIZES)
    d2l.set_params(encoder, random_params(reference.TransformerEncoder(SRC_VOCAB, **SIZES), np.random.default_rng(0)))
    tokens, lens = np.array([[1, 4, 2, 8, 0], [3, 3, 5, 0, 0]]), np.array([5, 3])
    table = d2l.get_params(encoder)["embedding"]                                   # (vocab, h)
    X = table[tokens] * math.sqrt(SIZES["num_hiddens"]) + reference.PositionalEncoding(8).P[:, :5]
    X = d2l.tensor(X)
    for block in encoder.blocks:
        X = block(X, ints(d2l, lens), training=False)
    got = encoder(ints(d2l, tokens), ints(d2l, lens), training=False)
    np.testing.assert_allclose(d2l.to_numpy(got), d2l.to_numpy(X), atol=1e-5)
    weights = encoder.attention_weights
    assert len(weights) == 2 and all(tuple(w.shape) == (2, 2, 5, 5) for w in weights)
    assert not d2l.to_numpy(weights[-1])[1, :, :, 3:].any()                   # padded keys get nothing


def test_decoder_is_scaled_embeddings_positions_blocks_and_a_dense_map(d2l):
    """The decoder's full pass, rebuilt from its children: each block causal over the targets and
    attending to the encoder's outputs, then W_out, b_out; its weights per block as (self, cross)."""
    decoder = d2l.TransformerDecoder(TGT_VOCAB, **SIZES)
    d2l.set_params(decoder, random_params(reference.TransformerDecoder(TGT_VOCAB, **SIZES), np.random.default_rng(1)))
    rng = np.random.default_rng(2)
    enc_outputs, lens, X = rng.normal(size=(2, 4, 8)), np.array([4, 2]), rng.integers(0, TGT_VOCAB, (2, 3))
    params = d2l.get_params(decoder)
    H = d2l.tensor(params["embedding"][X] * math.sqrt(8) + reference.PositionalEncoding(8).P[:, :3])
    for block in decoder.blocks:
        H = block(H, d2l.tensor(enc_outputs), ints(d2l, lens), training=False)
    want = d2l.to_numpy(H) @ params["W_out"] + params["b_out"]
    logits, state = decoder(ints(d2l, X), decoder.init_state(d2l.tensor(enc_outputs), ints(d2l, lens)), training=False)
    np.testing.assert_allclose(d2l.to_numpy(logits), want, atol=1e-4)
    assert [tuple(c.shape) for c in state[2]] == [(2, 3, 8)] * 2                # each block's inputs
    pairs = decoder.attention_weights
    assert [(tuple(s.shape), tuple(c.shape)) for s, c in pairs] == [((2, 2, 3, 3), (2, 2, 3, 4))] * 2
    assert not np.triu(d2l.to_numpy(pairs[0][0])[0, 0], 1).any()              # causal
    assert not d2l.to_numpy(pairs[1][1])[1, :, :, 2:].any()                   # the source's padding


def test_canonical_names_are_the_references(d2l):
    ours, ref = transformer(d2l, 0), transformer(reference, 0)
    names = d2l.get_params(ours)
    assert sorted(names) == sorted(reference.get_params(ref))
    assert names["decoder.W_out"].shape == (8, TGT_VOCAB) and names["encoder.embedding"].shape == (SRC_VOCAB, 8)
    assert {"encoder.blocks.1.attention.W_q", "decoder.blocks.1.attention2.W_o", "decoder.b_out"} <= set(names)


@pytest.mark.against_reference
def test_seq2seq_transformer_matches_the_reference(d2l):
    ours, ref = transformer(d2l, 3), transformer(reference, 3)
    src, tgt, lens = np.array([[1, 5, 2, 2, 0], [4, 3, 0, 0, 0]]), np.array([[1, 6, 3], [1, 2, 2]]), np.array([4, 2])
    got = ours(ints(d2l, src), ints(d2l, tgt), ints(d2l, lens), training=False)
    want = ref(src, tgt, lens, training=False)
    np.testing.assert_allclose(d2l.to_numpy(got), want, atol=1e-4)
    np.testing.assert_allclose(d2l.to_numpy(ours.attention_weights), ref.attention_weights, atol=1e-5)
    assert ref.attention_weights.shape == (2, 3, 5)                          # the last block's, heads averaged


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(length=st.sampled_from([3, 5]), data=st.data())
def test_step_by_step_equals_the_full_pass(d2l, length, data):
    """Fed in pieces of random sizes (the state passed on, so each piece after the first goes
    position by position through the blocks' caches), the decoder gives the full pass's logits."""
    model = transformer(d2l, data.draw(st.integers(0, 3)))
    cut = sorted(data.draw(st.sets(st.integers(1, length - 1), max_size=length - 1)))
    src, lens = np.array([[1, 5, 2, 2, 0], [4, 3, 0, 0, 0]]), np.array([4, 2])
    tgt = np.random.default_rng(length).integers(0, TGT_VOCAB, (2, length))
    full = d2l.to_numpy(model(ints(d2l, src), ints(d2l, tgt), ints(d2l, lens), training=False))
    enc_outputs = model.encoder(ints(d2l, src), ints(d2l, lens), training=False)
    state, pieces = model.decoder.init_state(enc_outputs, ints(d2l, lens)), []
    for start, stop in zip([0, *cut], [*cut, length]):
        logits, state = model.decoder(ints(d2l, tgt[:, start:stop]), state, training=False)
        pieces.append(d2l.to_numpy(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-4)


@pytest.mark.against_reference
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_greedy_decode_gives_the_references_tokens_and_attention(d2l, kind):
    """Each step's token and its attention over the source (a Transformer's: its last block's
    encoder-decoder weights at that step, heads averaged), as the reference decodes them."""
    ours, ref = MODELS[kind](d2l, 7), MODELS[kind](reference, 7)
    src = np.array([3, 1, 4, 1, 5], np.int32)
    tokens, attention = d2l.greedy_decode(ours, src, 4, 1, -1, 6)       # eos -1: all 6 steps
    want, want_attention = reference.greedy_decode(ref, src, 4, 1, -1, 6)
    assert tokens == want
    np.testing.assert_allclose(attention, want_attention, atol=1e-5)


# --- beam search ---------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 2**16), eos=st.sampled_from([2, 3]))
def test_beam_of_one_is_greedy_decoding(d2l, kind, seed, eos):
    model = MODELS[kind](d2l, seed)
    src = np.random.default_rng(seed).integers(0, SRC_VOCAB, 5).astype(np.int32)
    greedy, _ = d2l.greedy_decode(model, src, 4, 1, eos, 6)
    tokens, score, beam = d2l.beam_search(model, src, 4, 1, eos, 6, beam_size=1)
    assert tokens == greedy
    assert len(beam) == min(len(greedy) + 1, 6) and all(len(step) == 1 for step in beam)
    assert beam[-1][0][0] == greedy + [eos] * (len(greedy) < 6)


@pytest.mark.against_reference
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_beam_search_gives_the_references_tokens_and_scores(d2l, kind):
    ours, ref = MODELS[kind](d2l, 5), MODELS[kind](reference, 5)
    src = np.array([3, 1, 4, 1, 5], np.int32)
    for size, alpha in ((2, 0.0), (4, 0.6), (6, 1.0)):
        tokens, score, beam = d2l.beam_search(ours, src, 5, 1, 2, 8, beam_size=size, length_penalty=alpha)
        want, want_score, want_beam = reference.beam_search(ref, src, 5, 1, 2, 8, beam_size=size, length_penalty=alpha)
        assert tokens == want and abs(score - want_score) < 1e-4
        assert [[h[0] for h in step] for step in beam] == [[h[0] for h in step] for step in want_beam]
        np.testing.assert_allclose([h[1] for step in beam for h in step], [h[1] for step in want_beam for h in step],
                                   atol=1e-4)


def _exhaustive(log_probs_of, vocab, eos, num_steps, alpha):
    """The best hypothesis by length-normalized score over every sequence up to num_steps tokens."""
    best = None
    for n in range(1, num_steps + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (n < num_steps and seq[-1] != eos):
                continue                                        # ends at its first eos, or runs out of steps
            total = sum(log_probs_of(seq[:i])[t] for i, t in enumerate(seq))
            score = sampling.length_normalized(total, n, alpha)
            if best is None or score > best[1]:
                best = (list(seq[:-1] if seq[-1] == eos else seq), score)
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_wide_beam_finds_the_exhaustive_best(alpha):
    """Backend-free: with a beam wider than every hypothesis there is, beam search returns the best
    of all sequences by length-normalized score, the finished ones kept whatever their length."""
    vocab, eos, steps, rng = 3, 0, 4, np.random.default_rng(0)
    table = {}

    def logits_of(prefix):                                          # a fixed random distribution per prefix
        return table.setdefault(tuple(prefix), rng.normal(size=vocab) * 2)

    def log_probs_of(prefix):
        z = logits_of(prefix)
        return z - np.log(np.exp(z).sum())

    def next_logits(rows):
        return np.stack([logits_of(row[1:]) for row in rows])

    want = _exhaustive(log_probs_of, vocab, eos, steps, alpha)
    tokens, score, _ = sampling.beam_search(next_logits, -1, eos, steps, vocab ** steps, alpha)
    assert (tokens, round(score, 9)) == (want[0], round(want[1], 9))


def test_length_normalization_is_wu_et_al():
    assert sampling.length_normalized(-3.0, 7, 0.0) == -3.0
    assert math.isclose(sampling.length_normalized(-3.0, 7, 0.6), -3.0 / (12 / 6) ** 0.6)


def test_the_length_penalty_can_prefer_the_longer_hypothesis():
    """A short answer (eos at once, P 0.55) against a long one (P 0.45, then sure steps to eos after
    4 tokens): plain log P picks the short one; Wu et al.'s normalization at alpha = 1 the long one."""

    def next_logits(rows):
        t = rows.shape[1] - 1                                       # tokens: 0 eos, 1 go on
        return np.log([[0.55, 0.45] if t == 0 else [1e-9, 1] if t < 4 else [1, 1e-9]] * len(rows))

    short, _, _ = sampling.beam_search(next_logits, 9, 0, 8, 2, 0.0)
    long, _, _ = sampling.beam_search(next_logits, 9, 0, 8, 2, 1.0)
    assert short == [] and long == [1, 1, 1, 1]


@pytest.mark.needs("dropout")
def test_beam_search_runs_the_model_in_evaluation_mode_whatever_mode_it_was_left_in(d2l, adapter):
    model = transformer(d2l, 4, dropout=0.5)
    src = np.array([4, 7, 3, 8, 5], np.int32)

    def search():
        return d2l.beam_search(model, src, 4, 1, 2, 6)

    assert adapter.run_left_in_mode(model, True, search)[:2] == adapter.run_left_in_mode(model, False, search)[:2]


BAD_INPUT = {
    "beam size 0": (lambda d2l: d2l.beam_search(bahdanau(d2l, 0), [1, 2], 2, 1, 2, 3, beam_size=0), ValueError,
                    r"beam_size must be an integer >= 1 \(1 is greedy decoding\), got 0"),
    "beam size float": (lambda d2l: d2l.beam_search(bahdanau(d2l, 0), [1, 2], 2, 1, 2, 3, beam_size=2.5),
                        ValueError, r"beam_size must be an integer >= 1 \(1 is greedy decoding\), got 2.5"),
    "negative length penalty": (lambda d2l: d2l.beam_search(bahdanau(d2l, 0), [1, 2], 2, 1, 2, 3, length_penalty=-1),
                                ValueError, r"length_penalty must be a number >= 0"),
    "sizes and parts": (lambda d2l: d2l.Seq2Seq(5, encoder=d2l.TransformerEncoder(5, 8, 8, 2, 1),
                                                decoder=d2l.TransformerDecoder(5, 8, 8, 2, 1)),
                        ValueError, r"Seq2Seq: with an encoder and a decoder, the sizes must be left out, got src_voc"),
    "encoder alone": (lambda d2l: d2l.Seq2Seq(encoder=d2l.TransformerEncoder(5, 8, 8, 2, 1)), ValueError,
                      r"Seq2Seq: give both encoder and decoder, or neither"),
    "no blocks": (lambda d2l: d2l.TransformerEncoder(5, 8, 8, 2, 0), ValueError,
                  r"num_blocks must be a positive integer, got 0"),
    "heads do not divide": (lambda d2l: d2l.TransformerDecoder(5, 8, 8, 3, 1), ValueError, r"num_heads"),
    "float tokens": (lambda d2l: d2l.TransformerEncoder(5, 8, 8, 2, 1)(d2l.zeros((2, 3, 8))), ValueError,
                     r"tokens must be token ids of shape \(batch, steps\), got \(2, 3, 8\)"),
    "negative offset": (lambda d2l: d2l.PositionalEncoding(8)(d2l.zeros((1, 2, 8)), offset=-1), ValueError,
                        r"offset must be an integer >= 0 \(the position of the first step\), got -1"),
    "offset past max_len": (lambda d2l: d2l.PositionalEncoding(8, max_len=6)(d2l.zeros((1, 2, 8)), offset=5),
                            ValueError, r"X has 2 steps \(axis 1\), more than max_len=1"),
}
test_bad_input_is_named = bad_input_test(BAD_INPUT)


# --- the quality bar: the date task -----------------------------------------------------------------
# One NumPy-drawn start on every framework (tests/support.py), the data of chapter 3's model.

# The bar: 0.95 held-out exact match, greedy. A beam of 4 does not do worse than greedy by more
# than 2 dates of 100, and the loss falls to under a seventh of its start. Adam at 0.005 for 16 epochs,
# then a fresh Adam at a tenth of it for 4: at a constant rate the last epochs' loss jumps about (0.94
# on MXNet), the smaller steps settle it (0.994-0.996 on all four frameworks, 1.0 with the beam).
BAR = {"num_train": 2000, "num_val": 500, "batch_size": 64, "epochs": (16, 4), "lr": (0.005, 0.0005),
       "min_accuracy": 0.95, "loss_ratio": 1 / 7, "num_beam": 100, "beam_slack": 0.02}
CONFIG = {"num_hiddens": 32, "ffn_num_hiddens": 64, "num_heads": 4, "num_blocks": 2}
SRC_STEPS, TGT_STEPS = 22, 11


@pytest.mark.needs("training")
def test_transformer_learns_dates(d2l):
    data = Seq2SeqData(date_pairs(BAR["num_train"] + BAR["num_val"], seed=0), num_steps=(SRC_STEPS, TGT_STEPS),
                       batch_size=BAR["batch_size"], level="char", num_val=BAR["num_val"])
    model = d2l.Seq2Seq(encoder=d2l.TransformerEncoder(len(data.src_vocab), **CONFIG),
                        decoder=d2l.TransformerDecoder(len(data.tgt_vocab), **CONFIG))
    portable_transformer_init(d2l, model, seed=0, num_hiddens=CONFIG["num_hiddens"])
    start = time.perf_counter()
    losses = [loss for epochs, lr in zip(BAR["epochs"], BAR["lr"])
              for loss in d2l.train_seq2seq(model, data.train, epochs=epochs, lr=lr, progress=False)]
    seconds = time.perf_counter() - start
    assert len(losses) == sum(BAR["epochs"]) and losses[-1] < BAR["loss_ratio"] * losses[0], losses

    def hits(pairs, decode, **kwargs):
        for source, target in pairs:
            src, src_len, *_ = data.build([source], ["?"])
            tokens = decode(model, src[0], src_len[0], data.tgt_vocab.bos, data.tgt_vocab.eos, TGT_STEPS, **kwargs)[0]
            yield data.decode(tokens) == target

    right = list(hits(data.val_pairs, d2l.greedy_decode))
    greedy, greedy_subset = np.mean(right), np.mean(right[: BAR["num_beam"]])
    beam = np.mean(list(hits(data.val_pairs[: BAR["num_beam"]], d2l.beam_search, beam_size=4)))
    print(f"\n{d2l.BACKEND}: {len(losses)} epochs in {seconds:.1f} s, held-out exact match {greedy:.3f} greedy, "
          f"{beam:.3f} with a beam of 4 on the first {BAR['num_beam']} (greedy {greedy_subset:.3f}), "
          f"losses {[round(x, 3) for x in losses]}")
    assert greedy >= BAR["min_accuracy"], f"held-out exact match {greedy:.3f} < {BAR['min_accuracy']}"
    assert beam >= greedy_subset - BAR["beam_slack"], (
        f"a beam of 4 ({beam:.3f}) does worse than greedy ({greedy_subset:.3f})")
