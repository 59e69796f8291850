"""Data made or shipped offline, backend-free (NumPy and the standard library): a
date-normalization task generated on the spot (also as one character sequence per
example, for a decoder-only language model), and a loader for the tab-separated
sentence pairs of the d2l English-French corpus. Nothing is downloaded."""

from d2lattn.data.dates import date_pairs
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

__all__ = ["Batches", "DateLMData", "Seq2SeqData", "Vocab", "date_pairs", "preprocess", "read_tsv", "tokenize",
           "truncate_pad", "write_tsv"]
