"""BLEU as in d2l, backend-free."""

import collections
import math


def bleu(pred_seq, label_seq, k=2):
    """exp(min(0, 1 - len_label / len_pred)) * prod_{n=1..k} p_n ** (1 / 2**n).

    `pred_seq`, `label_seq`: strings (split on spaces) or token lists. p_n is the
    clipped n-gram precision: each n-gram of the label matches at most once. Since
    p_n <= 1, the exponent 1/2**n lifts p_n toward 1 as n grows: a long n-gram that
    matches counts for more than a short one. The brevity penalty punishes
    predictions shorter than the label. As in d2l, n runs only up to the
    prediction's length; an empty prediction scores 0.
    """
    pred = pred_seq.split(" ") if isinstance(pred_seq, str) else list(pred_seq)
    label = label_seq.split(" ") if isinstance(label_seq, str) else list(label_seq)
    if not pred or pred == [""]:
        return 0.0
    score = math.exp(min(0.0, 1 - len(label) / len(pred)))
    for n in range(1, min(k, len(pred)) + 1):
        label_ngrams = collections.Counter(tuple(label[i:i + n]) for i in range(len(label) - n + 1))
        matches = 0
        for i in range(len(pred) - n + 1):
            ngram = tuple(pred[i:i + n])
            if label_ngrams[ngram] > 0:
                matches += 1
                label_ngrams[ngram] -= 1
        score *= math.pow(matches / (len(pred) - n + 1), math.pow(0.5, n))
    return score
