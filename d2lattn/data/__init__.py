"""Data made or shipped offline, backend-free (NumPy and the standard library): a
date-normalization task generated on the spot (also as one character sequence per
example, for a decoder-only language model), a loader for the tab-separated
sentence pairs of the d2l English-French corpus, and scikit-learn's handwritten digits
(which ship inside its wheel; scikit-learn is imported only when they are loaded).
Nothing is downloaded."""

from d2lattn.data.dates import date_pairs
from d2lattn.data.digits import DigitsData
from d2lattn.data.lm import DateLMData
from d2lattn.data.translation import (
    Batches,
    Seq2SeqData,
    Vocab,
    preprocess,
    read_tsv,
    tokenize,
    truncate_pad,
    write_tsv,
)

__all__ = ["Batches", "DateLMData", "DigitsData", "Seq2SeqData", "Vocab", "date_pairs", "preprocess", "read_tsv",
           "tokenize", "truncate_pad", "write_tsv"]
