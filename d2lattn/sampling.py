"""Choosing the next token from logits, backend-free, so the same logits give the same tokens
on every backend (each backend's `generate` hands its last logits here as NumPy)."""

import numpy as np

from d2lattn import _checks


def next_tokens(logits, temperature, rng):
    """logits (b, vocab) -> int32 (b,): argmax at temperature 0, otherwise one draw per row from
    softmax(logits / temperature), computed in float64, by inverting the cumulative sum at
    `rng.random()` (numpy.random.default_rng(seed), advanced once per row)."""
    logits = np.asarray(logits, dtype=np.float64)                  # (b, vocab)
    if temperature == 0:
        return logits.argmax(-1).astype(np.int32)
    scaled = logits / _checks.checked_positive_number("temperature", temperature)
    p = np.exp(scaled - scaled.max(-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)               # (b, vocab)
    u = rng.random(len(logits))[:, None]                           # (b, 1)
    return np.minimum((cdf < u).sum(-1), logits.shape[-1] - 1).astype(np.int32)


def length_normalized(log_prob, length, alpha):
    """Wu et al. (2016)'s length normalization: log_prob / ((5 + length) / 6) ** alpha; alpha = 0
    ranks by the plain log-probability, and larger alphas favour longer hypotheses."""
    return log_prob / ((5 + length) / 6) ** alpha


def padded(prefixes, num_steps, pad):
    """Prefixes (k, t) padded on the right to (k, num_steps) with `pad`: a compiled causal decoder scores
    every length in one shape, reading the logits at position t - 1, which never sees the padding."""
    return np.pad(prefixes, [(0, 0), (0, num_steps - prefixes.shape[1])], constant_values=pad)


def beam_search(next_logits, bos, eos, num_steps, beam_size, length_penalty):
    """Beam search over a decoder that `next_logits` runs, backend-free, so the same logits give
    the same hypotheses on every backend.

    `next_logits(prefixes)`: int32 (beam_size, t) prefixes, each starting with `bos` -> logits
    (beam_size, vocab) of the token after each. Rows beyond the live hypotheses repeat row 0, so
    the decoder always sees beam_size rows. At each step every live hypothesis is extended by
    every token, in float64 log-probabilities; the beam_size best extensions are kept: those
    ending in `eos` are finished and leave the beam, the others stay live (the next step refills
    the beam from their extensions). The search stops when nothing is live, or after num_steps
    steps, where the live hypotheses join the finished ones. The answer is
    the hypothesis with the best length_normalized score, its length counting every scored
    token (eos included). Returns (tokens before eos, that score, the beam at each step: a
    list of (tokens, log-probability, finished) for every kept extension, best first)."""
    alive, finished, history = [((), 0.0)], [], []
    for _ in range(num_steps):
        prefixes = np.array([(bos, *tokens) for tokens, _ in alive], dtype=np.int32)  # (live, t)
        rows = np.concatenate([prefixes, np.repeat(prefixes[:1], beam_size - len(alive), 0)])  # (beam_size, t)
        logits = np.asarray(next_logits(rows), dtype=np.float64)[: len(alive)]           # (live, vocab)
        top = logits.max(-1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        scores = (np.array([score for _, score in alive])[:, None] + log_probs).ravel()  # (live * vocab,)
        best = np.argsort(-scores, kind="stable")[:beam_size]                             # ties: earlier first
        vocab, alive, step = log_probs.shape[1], [], []
        for i in best:
            tokens = (*(int(t) for t in prefixes[i // vocab, 1:]), int(i % vocab))      # after bos
            score = float(scores[i])
            if tokens[-1] == eos:
                finished.append((tokens[:-1], score, len(tokens)))
            else:
                alive.append((tokens, score))
            step.append((list(tokens), score, tokens[-1] == eos))
        history.append(step)
        if not alive:
            break
    else:
        finished += [(tokens, score, len(tokens)) for tokens, score in alive]
    tokens, score, length = max(finished, key=lambda f: length_normalized(f[1], f[2], length_penalty))
    return list(tokens), length_normalized(score, length, length_penalty), history

