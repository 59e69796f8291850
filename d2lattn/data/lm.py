"""The date task of chapter 3 for a decoder-only language model: one character sequence per example.

"march 5, 1996" -> "1996-03-05" becomes "<pad>...<pad>march 5, 1996=1996-03-05<eos>": the source
left-padded to SOURCE_STEPS characters, "=", the ten characters of the ISO date and <eos>. Every
prompt (padded source and "=") has PROMPT_STEPS tokens and every answer ANSWER_STEPS, so a whole
held-out set is one call: generate(model, data.val_prompts, data.ANSWER_STEPS).
"""

import numpy as np

from d2lattn.data.dates import MONTHS, WEEKDAYS
from d2lattn.data.translation import EOS, Batches, Vocab

# Every character a date source or target may hold, and the separator.
CHARS = sorted(set("".join(MONTHS + WEEKDAYS) + "0123456789 ,/.-="))
SOURCE_STEPS = 21                   # the longest source: "wed 30 september 2049"
PROMPT_STEPS = SOURCE_STEPS + 1     # ... and "="
ANSWER_STEPS = 11                   # "1996-03-05" and <eos>


class DateLMData:
    """A character vocabulary, batches for train_lm and held-out prompts for generate, from
    (source, target) pairs such as d2lattn.data.date_pairs(n).

    The first `num_train` pairs (default: all but `num_val`) train, the next `num_val` are held
    out. `.train` is a re-iterable of NumPy int32 batches (inputs (b, T), labels (b, T),
    valid_lens (b,)) with T = PROMPT_STEPS + ANSWER_STEPS - 1: the labels are the inputs
    shifted by one, and every position counts (valid_lens = T: the only padding is at the
    start, and predicting it is easy). Shuffled anew each pass from `seed`.
    `.val_prompts` int32 (num_val, PROMPT_STEPS) and `.val_answers` (the target strings).
    """

    SOURCE_STEPS, PROMPT_STEPS, ANSWER_STEPS = SOURCE_STEPS, PROMPT_STEPS, ANSWER_STEPS

    def __init__(self, pairs, *, batch_size, num_train=None, num_val=0, seed=0):
        pairs = list(pairs)
        num_train = len(pairs) - num_val if num_train is None else num_train
        if num_train <= 0 or num_val < 0 or num_train + num_val > len(pairs):
            raise ValueError(f"num_train ({num_train}) and num_val ({num_val}) do not fit {len(pairs)} pairs")
        self.vocab = Vocab(CHARS)  # <pad> 0, <bos> 1 (unused), <eos> 2, <unk> 3, then CHARS in order
        self.train_pairs, self.val_pairs = pairs[:num_train], pairs[num_train:num_train + num_val]
        sequences = np.array([self.encode(s, t) for s, t in self.train_pairs], dtype=np.int32)  # (n, T + 1)
        inputs, labels = sequences[:, :-1], sequences[:, 1:]                                  # (n, T) each
        valid_lens = np.full(len(sequences), inputs.shape[1], dtype=np.int32)                 # (n,)
        self.train = Batches((inputs, labels, valid_lens), batch_size, shuffle=True, seed=seed)
        self.val_prompts = self.prompts([s for s, _ in self.val_pairs])
        self.val_answers = [t for _, t in self.val_pairs]

    def encode(self, source, target=None):
        """Token ids: the source left-padded to SOURCE_STEPS, "=", and then, if given, the
        target and <eos>."""
        if len(source) > SOURCE_STEPS or "=" in source:
            raise ValueError(f"source must have at most {SOURCE_STEPS} characters and no '=', got {source!r}")
        ids = [self.vocab.pad] * (SOURCE_STEPS - len(source)) + self.vocab[list(source + "=")]
        return ids if target is None else ids + self.vocab[list(target)] + [self.vocab.eos]

    def prompts(self, sources):
        """int32 (len(sources), PROMPT_STEPS): ready for generate."""
        return np.array([self.encode(s) for s in sources], dtype=np.int32).reshape(-1, PROMPT_STEPS)

    def decode(self, ids):
        """Ids -> text up to <eos>, without the left padding; any other special token shows by
        its name (so "<pad>" in an answer never passes for a character)."""
        ids = list(ids)
        start = next((i for i, t in enumerate(ids) if t != self.vocab.pad), len(ids))
        return self._text(ids[start:])

    def answers(self, generated):
        """The answers in generate's output (n, PROMPT_STEPS + new tokens): the text after each
        prompt, up to <eos>."""
        return [self._text(row[PROMPT_STEPS:]) for row in np.asarray(generated)]

    def _text(self, ids):
        tokens = self.vocab.to_tokens(ids)
        return "".join(tokens[: tokens.index(EOS)] if EOS in tokens else tokens)

    def exact_match(self, generated, targets=None):
        """The fraction of rows whose answer is exactly its target (default: the held-out
        answers, for generate(model, data.val_prompts, data.ANSWER_STEPS)); an answer without
        its <eos> within the generated tokens runs on, and does not match."""
        targets = self.val_answers if targets is None else list(targets)
        answers = self.answers(generated)
        if len(answers) != len(targets):
            raise ValueError(f"generated has {len(answers)} rows, but there are {len(targets)} targets")
        return float(np.mean([a == t for a, t in zip(answers, targets)])) if targets else 0.0
