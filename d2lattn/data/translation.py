"""Sentence pairs -> vocabularies and padded NumPy batches for sequence to sequence.

Reads the tab-separated format of the d2l English-French corpus (Tatoeba's
fra.txt): one pair a line, "source<TAB>target", optionally followed by
"<TAB>attribution", e.g. "Go.\tVa !\tCC-BY 2.0 (France) Attribution: ...".
Nothing is downloaded: give it a file you have, or pairs made in memory
(d2lattn.data.date_pairs).
"""

import collections
import pathlib

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


def read_tsv(path, max_pairs=None):
    """[(source, target), ...] from a tab-separated file; a third column (attribution) is dropped."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 2:
                raise ValueError(f"{path}, line {number}: expected 'source<TAB>target[<TAB>attribution]', "
                                 f"got {line.rstrip()!r}")
            pairs.append((fields[0], fields[1]))
    return pairs


def write_tsv(path, pairs, attribution=None):
    """Write pairs in the same format (with a third column if `attribution` is given)."""
    tail = "" if attribution is None else f"\t{attribution}"
    pathlib.Path(path).write_text("".join(f"{s}\t{t}{tail}\n" for s, t in pairs), encoding="utf-8")


def preprocess(text, space_punctuation=True):
    """d2l's cleaning: lowercase, non-breaking spaces -> spaces, and (for word tokens) a space
    before , . ! ? where missing."""
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    if not space_punctuation:
        return text
    return "".join(" " + c if i and c in ",.!?" and text[i - 1] != " " else c for i, c in enumerate(text))


def tokenize(text, level="word"):
    """Tokens of preprocessed text: words split on spaces, or characters (spaces included)."""
    if level == "word":
        return [t for t in text.split(" ") if t]
    if level == "char":
        return list(text)
    raise ValueError(f"level must be 'word' or 'char', got {level!r}")


class Vocab:
    """Tokens <-> ids. Reserved first: <pad> 0, <bos> 1, <eos> 2, <unk> 3; then tokens seen at
    least `min_freq` times, most frequent first (ties in sorted order). Unknown tokens map to <unk>."""

    def __init__(self, tokens=(), min_freq=1):
        counts = collections.Counter(tokens)
        kept = sorted((t for t, n in counts.items() if n >= min_freq and t not in (PAD, BOS, EOS, UNK)),
                      key=lambda t: (-counts[t], t))
        self.idx_to_token = [PAD, BOS, EOS, UNK, *kept]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        self.pad, self.bos, self.eos, self.unk = range(4)

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[t] for t in tokens]

    def to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            return self.idx_to_token[int(ids)]
        return [self.idx_to_token[int(i)] for i in ids]


def truncate_pad(ids, num_steps, pad):
    """Cut to `num_steps` ids, or pad with `pad` up to it."""
    return list(ids[:num_steps]) + [pad] * (num_steps - len(ids))


class Batches:
    """A re-iterable of batches, tuples of NumPy arrays cut along the first axis. With
    `shuffle`, each pass draws a new order from one generator seeded by `seed`, so a
    run is repeatable. The last batch may be smaller."""

    def __init__(self, arrays, batch_size, *, shuffle=False, seed=0):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.arrays, self.batch_size, self.shuffle = tuple(arrays), batch_size, shuffle
        self._rng = np.random.default_rng(seed)

    def __len__(self):
        return -(-len(self.arrays[0]) // self.batch_size)

    def __iter__(self):
        n = len(self.arrays[0])
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            yield tuple(a[rows] for a in self.arrays)


class Seq2SeqData:
    """Vocabularies and batches for sequence to sequence from (source, target) pairs.

    The first `num_train` pairs (default: all but `num_val`) train, the next `num_val`
    are held out; the vocabularies come from the training pairs alone. `num_steps` is
    one length for both sides or (source steps, target steps).

    Each example is five int32 arrays: src (source + <eos>, cut or padded to the source
    steps), src_valid_lens (its tokens before padding), labels (target + <eos>, cut or
    padded), dec_input (<bos> + labels shifted right: teacher forcing) and
    label_valid_lens. `.train` and `.val` are re-iterables of such batches.
    """

    def __init__(self, pairs, *, num_steps, batch_size, level="word", min_freq=1, num_train=None, num_val=0,
                 seed=0):
        pairs = list(pairs)
        num_train = len(pairs) - num_val if num_train is None else num_train
        if num_train <= 0 or num_val < 0 or num_train + num_val > len(pairs):
            raise ValueError(f"num_train ({num_train}) and num_val ({num_val}) do not fit {len(pairs)} pairs")
        self.level = level
        self.src_steps, self.tgt_steps = (num_steps, num_steps) if isinstance(num_steps, int) else num_steps
        self.train_pairs, self.val_pairs = pairs[:num_train], pairs[num_train:num_train + num_val]
        src, tgt = self._tokens(self.train_pairs)
        self.src_vocab = Vocab([t for s in src for t in s], min_freq)
        self.tgt_vocab = Vocab([t for s in tgt for t in s], min_freq)
        self.train = Batches(self._build(self.train_pairs), batch_size, shuffle=True, seed=seed)
        self.val = Batches(self._build(self.val_pairs), batch_size)

    @classmethod
    def from_tsv(cls, path, *, max_pairs=None, **kwargs):
        """Read a tab-separated file (the d2l English-French format), then as the constructor."""
        return cls(read_tsv(path, max_pairs), **kwargs)

    def _build(self, pairs):
        return self.build([s for s, _ in pairs], [t for _, t in pairs])

    def _tokens(self, pairs):
        words = self.level == "word"  # characters need no space before punctuation
        src = [tokenize(preprocess(s, words), self.level) for s, _ in pairs]
        tgt = [tokenize(preprocess(t, words), self.level) for _, t in pairs]
        return src, tgt

    def build(self, src_sentences, tgt_sentences):
        """(src, src_valid_lens, dec_input, labels, label_valid_lens) for raw sentences."""
        src, tgt = self._tokens(list(zip(src_sentences, tgt_sentences)))
        src, src_valid_lens = self._array(src, self.src_vocab, self.src_steps)
        labels, label_valid_lens = self._array(tgt, self.tgt_vocab, self.tgt_steps)
        bos = np.full((len(labels), 1), self.tgt_vocab.bos, dtype=np.int32)
        dec_input = np.concatenate([bos, labels[:, :-1]], 1)
        return src, src_valid_lens, dec_input, labels, label_valid_lens

    @staticmethod
    def _array(sentences, vocab, num_steps):
        rows = [truncate_pad(vocab[s] + [vocab.eos], num_steps, vocab.pad) for s in sentences]
        lens = [min(len(s) + 1, num_steps) for s in sentences]
        return np.array(rows, dtype=np.int32).reshape(len(rows), num_steps), np.array(lens, dtype=np.int32)

    def decode(self, ids):
        """Target ids -> text (words joined by spaces, characters by nothing), stopping at <eos>."""
        tokens = []
        for token in self.tgt_vocab.to_tokens(ids):
            if token == EOS:
                break
            if token not in (PAD, BOS):
                tokens.append(token)
        return (" " if self.level == "word" else "").join(tokens)
