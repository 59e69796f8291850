"""The decoder-only language model on the backend under test: generation with and without the
cache, sampling by seed, safetensors round trips, train_lm's arguments, and the quality bar:
a TransformerLM trained on the date task written as one sequence."""

import math
import time

import numpy as np
import pytest

from d2lattn import numpy as reference
from d2lattn.data import DateLMData, date_pairs

# The quality bar's model and data. Measured on torch (CPU, one thread): held-out exact match 0.956 after
# 12 epochs from seed 0 (0.952 after 10; another draw of the start, 0.99 after 12), about 14 s of CPU
# for the training; the bar leaves room for other frameworks' numerics.
NUM_TRAIN, NUM_VAL, BATCH, EPOCHS, LR = 2000, 500, 64, 12, 0.005
CONFIG = {"num_hiddens": 64, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 128, "num_kv_heads": 2}
MIN_ACCURACY = 0.9
# A small model for the other tests: grouped-query heads and a sliding window shorter than the text.
SMALL = {"vocab_size": 11, "num_hiddens": 16, "num_heads": 4, "num_layers": 2, "ffn_num_hiddens": 24,
         "num_kv_heads": 2, "window": 4}


def portable_init(d2l, model, seed):
    """The same starting weights on every backend, drawn by NumPy: embedding N(0, 1), RMSNorm gains
    ones, every dense map W (in, out) uniform in +-1/sqrt(in)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in sorted(d2l.get_params(model).items()):
        if name.endswith("gamma"):
            params[name] = np.ones(p.shape)
        elif name.endswith("embedding"):
            params[name] = rng.normal(size=p.shape)
        else:
            params[name] = rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0])
    d2l.set_params(model, params)
    return params


def _small(d2l, seed=0):
    """A small model on the backend and the reference's copy, with the same random weights; the
    queries and keys scaled up so that attention is sharp and where it looks changes the tokens."""
    model = d2l.TransformerLM(**SMALL)
    params = portable_init(d2l, model, seed)
    params = {n: p * 4 if n.endswith(("W_q", "W_k")) else p for n, p in params.items()}
    d2l.set_params(model, params)
    ref = reference.TransformerLM(**SMALL)
    reference.set_params(ref, params)
    return model, ref


PROMPT = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], dtype=np.int32)


def test_generate_with_and_without_cache_gives_the_same_tokens(d2l):
    model, ref = _small(d2l, seed=1)
    cached = d2l.generate(model, PROMPT, 9)  # 14 positions: the window of 4 slides over the cache
    assert isinstance(cached, np.ndarray) and cached.shape == (2, 14) and cached.dtype.kind == "i"
    np.testing.assert_array_equal(cached[:, :5], PROMPT)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 9, use_cache=False), cached)
    np.testing.assert_array_equal(reference.generate(ref, PROMPT, 9), cached)  # the same as the reference
    assert len(set(cached[:, 5:].ravel().tolist())) > 1, "a constant continuation would test little"


def test_cached_pieces_give_the_logits_of_one_pass(d2l):
    model, _ = _small(d2l, seed=2)
    tokens = np.random.default_rng(3).integers(0, SMALL["vocab_size"], (2, 9)).astype(np.int32)
    full, _ = model(d2l.tensor(tokens), training=False)
    logits, cache, start = [], None, 0
    for size in (4, 1, 3, 1):  # a prefill, then pieces of one and of several tokens
        out, cache = model(d2l.tensor(tokens[:, start:start + size]), cache=cache, training=False)
        logits.append(d2l.to_numpy(out))
        start += size
    np.testing.assert_allclose(np.concatenate(logits, 1), d2l.to_numpy(full), atol=1e-5)
    assert len(cache) == SMALL["num_layers"]
    assert tuple(cache[0][0].shape) == (2, SMALL["num_kv_heads"], 9, SMALL["num_hiddens"] // SMALL["num_heads"])


def test_sampled_generation_is_deterministic_by_seed(d2l):
    model, ref = _small(d2l, seed=4)
    first = d2l.generate(model, PROMPT, 8, temperature=1.5, seed=7)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 8, temperature=1.5, seed=7), first)
    np.testing.assert_array_equal(d2l.generate(model, PROMPT, 8, temperature=1.5, seed=7, use_cache=False), first)
    np.testing.assert_array_equal(reference.generate(ref, PROMPT, 8, temperature=1.5, seed=7), first)
    assert not np.array_equal(d2l.generate(model, PROMPT, 8, temperature=1.5, seed=8), first)
    assert not np.array_equal(d2l.generate(model, PROMPT, 8), first)  # sampled, not greedy


def test_save_params_load_params_round_trip(d2l, tmp_path):
    model, ref = _small(d2l, seed=5)
    path = tmp_path / "lm.safetensors"
    d2l.save_params(model, path)
    loaded = d2l.TransformerLM(**SMALL)
    d2l.load_params(loaded, path)
    want = d2l.get_params(model)
    got = d2l.get_params(loaded)
    assert sorted(got) == sorted(want)
    for name in want:  # the file holds float32 (the reference computes in float64)
        np.testing.assert_array_equal(got[name].astype(np.float32), want[name].astype(np.float32), err_msg=name)
    tokens = d2l.tensor(PROMPT)
    np.testing.assert_allclose(d2l.to_numpy(loaded(tokens, training=False)[0]),
                               d2l.to_numpy(model(tokens, training=False)[0]), atol=1e-5)
    into_reference = reference.TransformerLM(**SMALL)  # the file is backend-free: the reference reads it too
    reference.load_params(into_reference, path)
    np.testing.assert_allclose(into_reference(PROMPT)[0], d2l.to_numpy(model(tokens, training=False)[0]), atol=1e-5)
    # strict like set_params, naming the same first mismatch (by name) on every backend
    with pytest.raises(ValueError, match=r"set_params: parameter 'W_out' has shape \(16, 11\), expected \(16, 12\)"):
        d2l.load_params(d2l.TransformerLM(**{**SMALL, "vocab_size": 12}), path)
    with pytest.raises(ValueError, match="missing parameter"):
        d2l.load_params(d2l.TransformerLM(**{**SMALL, "num_layers": 3}), path)


def test_train_lm_arguments(d2l, backend_name):
    model = d2l.TransformerLM(**SMALL)
    portable_init(d2l, model, seed=6)
    tokens = np.random.default_rng(7).integers(0, SMALL["vocab_size"], (4, 7)).astype(np.int32)
    batch = (tokens[:, :-1], tokens[:, 1:], np.array([6, 6, 3, 1], np.int32))
    if backend_name == "numpy":
        with pytest.raises(ValueError, match="forward-only"):
            d2l.train_lm(model, [batch], epochs=2, progress=False)
        return
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        d2l.train_lm(model, [batch], epochs=0)
    with pytest.raises(ValueError, match="gave no batch"):
        d2l.train_lm(model, [], epochs=1, progress=False)
    losses = d2l.train_lm(model, [batch, batch], epochs=3, lr=0.01, progress=True)  # the bar goes to stderr
    assert len(losses) == 3 and all(isinstance(x, float) for x in losses) and losses[-1] < losses[0]


@pytest.fixture(scope="module")
def dates():
    return DateLMData(date_pairs(NUM_TRAIN + NUM_VAL, seed=0), batch_size=BATCH, num_val=NUM_VAL, seed=0)


def test_lm_learns_dates(d2l, backend_name, dates):
    """From the same NumPy-drawn weights and batches on every backend, train on "source=target" and
    check greedy generation's held-out exact match (the answer after "=" up to <eos>)."""
    model = d2l.TransformerLM(len(dates.vocab), **CONFIG)
    portable_init(d2l, model, seed=0)
    if backend_name == "numpy":
        # The reference is forward-only: it must refuse to train, clearly, not pretend to.
        with pytest.raises(ValueError, match="forward-only"):
            d2l.train_lm(model, dates.train, epochs=EPOCHS, lr=LR, progress=False)
        return
    start = time.perf_counter()
    losses = d2l.train_lm(model, dates.train, epochs=EPOCHS, lr=LR, progress=False)
    seconds = time.perf_counter() - start
    assert len(losses) == EPOCHS and losses[-1] < losses[0], losses
    generated = d2l.generate(model, dates.val_prompts, dates.ANSWER_STEPS)
    accuracy = dates.exact_match(generated)
    # A trained model leans on attention: the cache must give exactly what recomputing everything gives.
    np.testing.assert_array_equal(d2l.generate(model, dates.val_prompts[:50], dates.ANSWER_STEPS, use_cache=False),
                                  generated[:50])
    print(f"\n{backend_name}: {EPOCHS} epochs in {seconds:.1f} s, held-out exact match {accuracy:.3f}, "
          f"losses {[round(x, 3) for x in losses]}")
    assert accuracy >= MIN_ACCURACY, f"held-out exact match {accuracy:.3f} < {MIN_ACCURACY} after {seconds:.0f} s"
