"""The offline data (the date task and the sentence-pair loader) and BLEU: backend-free."""

import datetime
import math
import re

import numpy as np
import pytest

from d2lattn.data import (
    Batches,
    DateLMData,
    Seq2SeqData,
    Vocab,
    date_pairs,
    preprocess,
    read_tsv,
    tokenize,
    truncate_pad,
    write_tsv,
)
from d2lattn.data.dates import MONTHS, WEEKDAYS
from d2lattn.metrics import bleu

# --- the date task -------------------------------------------------------------------


def _parse(source):
    """An independent reading of each format the generator writes -> datetime.date."""
    month = {m: i + 1 for i, m in enumerate(MONTHS)} | {m[:3]: i + 1 for i, m in enumerate(MONTHS)}
    if m := re.fullmatch(r"(?:(\w{3}) )?(\d{1,2}) ([a-z]+) (\d{4})", source):
        date = datetime.date(int(m[4]), month[m[3]], int(m[2]))
        assert m[1] is None or m[1] == WEEKDAYS[date.weekday()], source
        return date
    if m := re.fullmatch(r"([a-z]+) (\d{1,2}), (\d{4})", source):
        return datetime.date(int(m[3]), month[m[1]], int(m[2]))
    if m := re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2})", source):
        year = int(m[3])
        return datetime.date(year + (1900 if year >= 50 else 2000), int(m[2]), int(m[1]))
    if m := re.fullmatch(r"(\d{2})\.(\d{2})\.(\d{4})", source):
        return datetime.date(int(m[3]), int(m[2]), int(m[1]))
    raise AssertionError(f"unknown format: {source!r}")


def test_date_pairs_are_correct_and_deterministic():
    pairs = date_pairs(3000, seed=0)
    assert pairs == date_pairs(3000, seed=0) and pairs != date_pairs(3000, seed=1)
    assert len({s for s, _ in pairs}) == 3000                      # distinct sources
    for source, target in pairs:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", target)
        assert _parse(source).isoformat() == target, source
    years = [int(t[:4]) for _, t in pairs]
    assert min(years) == 1950 and max(years) == 2049
    kinds = {re.sub(r"[a-z]+", "a", re.sub(r"\d+", "0", s)) for s, _ in pairs}
    assert kinds == {"a 0 a 0", "0 a 0", "a 0, 0", "0/0/0", "0.0.0"}  # "5 march" and "5 mar" read alike
    assert pairs[:2] == [("24 jan 2035", "2035-01-24"), ("11 february 2001", "2001-02-11")]  # pinned


def test_date_pairs_arguments():
    with pytest.raises(ValueError, match="1950 <= first_year <= last_year <= 2049"):
        date_pairs(5, first_year=1900)
    with pytest.raises(ValueError, match="could not draw 3000 distinct sources from the 366 days of 2000-2000"):
        date_pairs(3000, first_year=2000, last_year=2000)  # at most 366 days x 6 formats
    assert len(date_pairs(1500, first_year=2000, last_year=2000)) == 1500


# --- the sentence-pair format of the d2l English-French corpus --------------------------

LINES = [
    "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & #1158250 (Wittydev)",
    "Hi.\tSalut !\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM) & #509819 (Aiji)",
    "",
    "Run!\tCours\u202f!",
    "I won!\tJ'ai gagné\u00a0!\tCC-BY 2.0 (France) Attribution: tatoeba.org #2005188 (CK)",
    "Go now.\tVa, maintenant.",
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "fra.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_read_tsv(corpus, tmp_path):
    pairs = read_tsv(corpus)
    assert pairs == [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours\u202f!"), ("I won!", "J'ai gagné\u00a0!"),
                     ("Go now.", "Va, maintenant.")]  # attribution dropped, blank line skipped
    assert read_tsv(corpus, max_pairs=2) == pairs[:2]
    bad = tmp_path / "bad.txt"
    bad.write_text("Go.\tVa !\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 'source<TAB>target\[<TAB>attribution\]'"):
        read_tsv(bad)
    again = tmp_path / "again.txt"
    write_tsv(again, pairs, attribution="made by the test")
    assert read_tsv(again) == pairs
    assert again.read_text(encoding="utf-8").splitlines()[0] == "Go.\tVa !\tmade by the test"


def test_preprocess_and_tokenize():
    assert preprocess("Go.") == "go ."
    assert preprocess("Cours\u202f!") == "cours !"                   # narrow no-break space
    assert preprocess("J'ai gagné\u00a0!") == "j'ai gagné !"          # no-break space
    assert preprocess("Hi, you!Now?") == "hi , you !now ?"
    assert preprocess("Va !") == "va !"                                # no second space
    assert preprocess("5.3.96, OK", space_punctuation=False) == "5.3.96, ok"
    assert tokenize("hi , you  !") == ["hi", ",", "you", "!"]
    assert tokenize("a b", level="char") == ["a", " ", "b"]
    with pytest.raises(ValueError, match="level must be 'word' or 'char', got 'byte'"):
        tokenize("a", level="byte")


def test_vocab():
    vocab = Vocab(["b", "a", "c", "a", "b", "a", "d"], min_freq=2)
    assert vocab.idx_to_token == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]  # by count, c and d too rare
    assert (vocab.pad, vocab.bos, vocab.eos, vocab.unk) == (0, 1, 2, 3) and len(vocab) == 6
    assert vocab["a"] == 4 and vocab["c"] == 3 and vocab[["b", "zzz"]] == [5, 3]
    assert vocab.to_tokens([4, 5, 2]) == ["a", "b", "<eos>"] and vocab.to_tokens(np.int32(1)) == "<bos>"
    assert Vocab(["y", "x"]).idx_to_token[4:] == ["x", "y"]          # ties in sorted order


def test_truncate_pad():
    assert truncate_pad([5, 6, 7], 5, 0) == [5, 6, 7, 0, 0]
    assert truncate_pad([5, 6, 7], 2, 0) == [5, 6]


def test_arrays_from_the_corpus(corpus):
    data = Seq2SeqData.from_tsv(corpus, num_steps=4, batch_size=2, num_val=1)
    assert [p[0] for p in data.train_pairs] == ["Go.", "Hi.", "Run!", "I won!"] and data.val_pairs == [
        ("Go now.", "Va, maintenant.")]
    src_vocab, tgt_vocab = data.src_vocab, data.tgt_vocab
    # training tokens only: "go ." "hi ." "run !" "i won !" -> '.' and '!' twice, then the rest in order
    assert src_vocab.idx_to_token[4:] == ["!", ".", "go", "hi", "i", "run", "won"]
    src, src_lens, dec_input, labels, label_lens = data.build(["Go.", "I won!", "Go now."],
                                                              ["Va !", "J'ai gagné\u00a0!", "Va, maintenant."])
    s, t = src_vocab, tgt_vocab
    np.testing.assert_array_equal(src, [[s["go"], s["."], 2, 0], [s["i"], s["won"], s["!"], 2],
                                        [s["go"], 3, s["."], 2]])     # "now" is unknown
    np.testing.assert_array_equal(src_lens, [3, 4, 4])
    np.testing.assert_array_equal(labels, [[t["va"], t["!"], 2, 0], [t["j'ai"], t["gagné"], t["!"], 2],
                                           [t["va"], 3, 3, t["."]]])  # cut: no room for <eos>
    np.testing.assert_array_equal(dec_input[:, 0], [1, 1, 1])          # <bos>, then the labels shifted
    np.testing.assert_array_equal(dec_input[:, 1:], labels[:, :-1])
    np.testing.assert_array_equal(label_lens, [3, 4, 4])
    assert all(a.dtype == np.int32 for a in (src, src_lens, dec_input, labels, label_lens))
    assert data.decode(labels[0]) == "va !" and data.decode([t["va"], 2, t["!"]]) == "va"
    assert len(data.train) == 2 and [len(b[0]) for b in data.val] == [1]


def test_batches_cover_every_example_once_per_pass_and_reshuffle():
    arrays = (np.arange(10), np.arange(10) * 2)
    batches = Batches(arrays, 4, shuffle=True, seed=3)
    passes = [[tuple(b[0]) for b in batches] for _ in range(2)]
    for order in passes:
        assert [len(b) for b in order] == [4, 4, 2] and sorted(sum(order, ())) == list(range(10))
    assert passes[0] != passes[1]                                      # a new order each pass
    again = Batches(arrays, 4, shuffle=True, seed=3)
    assert [[tuple(b[0]) for b in again] for _ in range(2)] == passes  # repeatable from the seed
    for first, second in Batches(arrays, 4, shuffle=True, seed=3):
        np.testing.assert_array_equal(second, first * 2)               # rows stay together
    assert [list(b[0]) for b in Batches(arrays, 6)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        Batches(arrays, 0)


def test_date_task_through_the_loader():
    data = Seq2SeqData(date_pairs(100, seed=0), num_steps=(22, 11), batch_size=32, level="char", num_val=20)
    src, src_lens, dec_input, labels, label_lens = next(iter(data.val))
    assert src.shape == (20, 22) and labels.shape == (20, 11)
    assert (label_lens == 11).all()                                     # 10 characters + <eos>
    assert data.decode(labels[0]) == data.val_pairs[0][1]
    assert "".join(data.src_vocab.to_tokens(src[0, :src_lens[0] - 1])) == data.val_pairs[0][0]


def test_date_task_as_one_sequence():
    """DateLMData: '<pad>...<pad>source=target<eos>', source left-padded to 21 characters."""
    pairs = date_pairs(40, seed=3)
    data = DateLMData(pairs, batch_size=16, num_val=10)
    pad, eos = data.vocab.pad, data.vocab.eos
    ids = data.encode("5/3/96", "1996-03-05")
    assert ids[:15] == [pad] * 15 and data.vocab.to_tokens(ids[15:]) == [*"5/3/96=1996-03-05", "<eos>"]
    assert data.decode(ids) == "5/3/96=1996-03-05" and data.decode(data.encode("5/3/96")) == "5/3/96="
    batches = list(data.train)
    assert [len(b[0]) for b in batches] == [16, 14]
    inputs, labels, valid_lens = (np.concatenate(a) for a in zip(*batches))
    assert inputs.dtype == labels.dtype == valid_lens.dtype == np.int32
    assert inputs.shape == labels.shape == (30, 21 + 1 + 11 - 1) and (valid_lens == 32).all()
    np.testing.assert_array_equal(inputs[:, 1:], labels[:, :-1])       # labels: the next token
    assert (labels[:, -1] == eos).all() and (inputs[:, 0] == pad).all()
    texts = sorted(data.decode([*x, y[-1]]) for x, y in zip(inputs, labels))
    assert texts == sorted(f"{s}={t}" for s, t in pairs[:30])          # every training pair, once a pass
    assert data.val_prompts.shape == (10, 22) and data.val_prompts.dtype == np.int32
    assert [data.decode(p) for p in data.val_prompts] == [f"{s}=" for s, _ in pairs[30:]]
    assert data.val_answers == [t for _, t in pairs[30:]]
    # generate's output: the prompts and ANSWER_STEPS new tokens each
    generated = np.array([data.encode(s, t) for s, t in pairs[30:]])
    assert generated.shape == (10, data.PROMPT_STEPS + data.ANSWER_STEPS)
    assert data.answers(generated) == data.val_answers and data.exact_match(generated) == 1.0
    generated[0, 23] = pad                                             # a <pad> for the second digit
    generated[1, -1] = data.vocab["0"]                                 # no <eos>: the answer runs on
    generated[2, -2] = eos                                             # an <eos> in place of a character
    assert data.exact_match(generated) == 0.7
    assert data.answers(generated)[:2] == [f"{pairs[30][1][0]}<pad>{pairs[30][1][2:]}", pairs[31][1] + "0"]
    assert data.exact_match(generated[:2], ["x", pairs[31][1] + "0"]) == 0.5
    with pytest.raises(ValueError, match="at most 21 characters"):
        data.encode("wednesday 30 september 2049")


# --- BLEU, worked out by hand ------------------------------------------------------------


def test_bleu_by_hand():
    assert bleu("a b c d", "a b c d") == 1.0
    # equal lengths: no penalty; p1 = 3/4, p2 = 2/3 ("a b", "b c" match, "c d" does not)
    assert bleu("a b c d", "a b c e") == pytest.approx((3 / 4) ** (1 / 2) * (2 / 3) ** (1 / 4))
    # too short: exp(1 - 4/2) = exp(-1), every n-gram matches
    assert bleu("a b", "a b c d") == pytest.approx(math.exp(-1))
    # clipped: "the" matches once, so p1 = 1/3; no bigram matches, so the score is 0
    assert bleu("the the the", "the cat") == 0.0
    # k = 3: p1 = 4/5, p2 = 2/4 ("a b", "b c"), p3 = 1/3 ("a b c"); longer than the label: no penalty
    assert bleu("a b c x d", "a b c d", k=3) == pytest.approx((4 / 5) ** 0.5 * (2 / 4) ** 0.25 * (1 / 3) ** 0.125)
    assert bleu("a", "a", k=4) == 1.0                                   # n only up to the prediction's length
    assert bleu(["a", "b"], ["a", "b", "c", "d"]) == bleu("a b", "a b c d")
    assert bleu("", "a b") == 0.0


# --- handwritten digits --------------------------------------------------------------------------


def test_digits_split_is_fixed_and_the_batches_cover_the_training_images():
    from d2lattn.data import DigitsData

    a, b = DigitsData(batch_size=64, seed=0), DigitsData(batch_size=100, seed=1)
    assert a.train_images.shape == (1500, 8, 8, 1) and a.val_images.shape == (297, 8, 8, 1)
    assert a.train_images.dtype == np.float32 and a.train_labels.dtype == np.int32
    assert 0 <= a.train_images.min() and a.train_images.max() == 1.0          # pixels 0..16 scaled to [0, 1]
    np.testing.assert_array_equal(a.val_images, b.val_images)                # the seed shuffles, never splits
    held_out = {x.tobytes() for x in a.val_images}
    assert not any(x.tobytes() in held_out for x in a.train_images[:200])     # no held-out image trains
    images, labels = (np.concatenate(parts) for parts in zip(*a.train))
    assert len(a.train) == 24 and images.shape == (1500, 8, 8, 1)
    assert sorted(labels.tolist()) == sorted(a.train_labels.tolist())
    assert set(np.unique(a.val_labels)) == set(range(10))
    with pytest.raises(ValueError, match="num_val must be between 1 and 1796, got 0"):
        DigitsData(batch_size=8, num_val=0)
