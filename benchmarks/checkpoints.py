"""A checkpoint at SmolLM2-135M's configuration: loading it and generating 128 tokens from it.

- PyTorch (`against_transformers`, from bench_torch.py on one thread; transformers is in its environment):
  transformers writes a LlamaForCausalLM of SmolLM2-135M's configuration with its own random
  initialisation to a temporary directory; then, interleaved in one process, our `from_pretrained`
  against `AutoModelForCausalLM.from_pretrained`, and our cached greedy `generate` of 128 tokens
  against `model.generate(do_sample=False, max_new_tokens=128)` (its KV cache), from the same
  short prompt. Printed as ours / transformers (the issue's bar: 1.25).
- JAX and TensorFlow (`tokens_per_second`; their environments have no transformers): our own
  `save_pretrained` writes the same configuration with NumPy-drawn weights (std 0.02, gains 1,
  as transformers initialises them) to a temporary directory; then `from_pretrained`'s seconds,
  and the tokens per second of cached greedy generation (the compile of the first call reported
  apart).
Nothing is committed or kept: each run writes its directory (about 540 MB of float32) and
deletes it.

    python -m benchmarks.checkpoints BACKEND        (bench_torch, bench_jax and bench_tensorflow call one of the two)
"""

import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks import common
from d2lattn import _backend, hub

# HuggingFaceTB/SmolLM2-135M's config.json, as far as it shapes the model
SMOLLM2 = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
           "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
           "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "hidden_act": "silu"}
NEW_TOKENS = 128
PROMPT = np.random.default_rng(0).integers(0, SMOLLM2["vocab_size"], (1, 8))  # (1, 8): a short prompt


def _title(what):
    print(f"\nSmolLM2-135M's configuration ({SMOLLM2['num_hidden_layers']} layers, hidden {SMOLLM2['hidden_size']}, "
          f"{SMOLLM2['num_attention_heads']} heads / {SMOLLM2['num_key_value_heads']} kv, vocab "
          f"{SMOLLM2['vocab_size']}, tied), random weights; {what}; prompt {PROMPT.shape[1]} tokens, "
          f"{NEW_TOKENS} new, greedy, cached")


def against_transformers(d2l, repeats=3):
    """PyTorch: our from_pretrained and generate against transformers', ratios ours / theirs."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**{k: v for k, v in SMOLLM2.items() if k != "model_type"})
    with tempfile.TemporaryDirectory(prefix="d2lattn-smollm2-") as path:
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(path)   # transformers' own initialisation
        _title(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
               f"{transformers.__version__}, written by transformers")
        load = common.compare(lambda: d2l.from_pretrained(path),
                              lambda: transformers.AutoModelForCausalLM.from_pretrained(path),
                              repeats=repeats, warmup=1)
        ours, theirs = d2l.from_pretrained(path), transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = torch.as_tensor(PROMPT)
    ones = torch.ones_like(prompt)

    def hf_generate():
        return theirs.generate(prompt, attention_mask=ones, do_sample=False, max_new_tokens=NEW_TOKENS,
                               pad_token_id=0, eos_token_id=None).numpy()

    mine = d2l.generate(ours, PROMPT, NEW_TOKENS)
    same = int((mine == hf_generate()).all(0).cumprod().sum()) - PROMPT.shape[1]  # tokens equal before a first split
    generation = common.compare(lambda: d2l.generate(ours, PROMPT, NEW_TOKENS), hf_generate,
                                repeats=repeats, warmup=1)
    common.report(f"ours / transformers ({repeats} interleaved repeats, medians); the first {same} of "
                  f"{NEW_TOKENS} greedy tokens equal", [
                      ("from_pretrained vs AutoModelForCausalLM.from_pretrained", *load),
                      (f"generate {NEW_TOKENS} tokens vs model.generate", *generation)])
    print(f"tokens/s: ours {NEW_TOKENS / generation[0]:.1f}, transformers {NEW_TOKENS / generation[1]:.1f}")


def write_ours(d2l, path, seed=0):
    """Our save_pretrained of a model at SmolLM2-135M's configuration, NumPy-drawn weights at
    transformers' scale: dense maps and the embedding N(0, 0.02^2), norm gains 1."""
    model = d2l.TransformerLM(**hub.model_kwargs(SMOLLM2))
    rng = np.random.default_rng(seed)
    params = {name: np.ones(p.shape, np.float32) if name.endswith("gamma") else
              rng.normal(0, 0.02, p.shape).astype(np.float32) for name, p in sorted(d2l.get_params(model).items())}
    d2l.set_params(model, params)
    d2l.save_pretrained(model, path, family="llama")


def _seconds(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def tokens_per_second(d2l, how, repeats=3):
    """JAX, TensorFlow: from_pretrained's seconds and cached greedy generation's tokens per second."""
    with tempfile.TemporaryDirectory(prefix="d2lattn-smollm2-") as path:
        write_ours(d2l, path)
        _title(f"{_backend.DISPLAY_NAMES[d2l.BACKEND]}, {how}, written by our save_pretrained")
        loads = [_seconds(lambda: d2l.from_pretrained(path)) for _ in range(repeats)]
    model = loads[-1][1]
    first, _ = _seconds(lambda: d2l.generate(model, PROMPT, NEW_TOKENS))   # traces and compiles the steps
    warm = statistics.median(_seconds(lambda: d2l.generate(model, PROMPT, NEW_TOKENS))[0] for _ in range(repeats))
    print(f"from_pretrained {statistics.median(s for s, _ in loads):.2f} s (median of {repeats}); generate "
          f"{NEW_TOKENS} tokens: first call {first:.2f} s (compiling), then {warm:.2f} s = "
          f"{NEW_TOKENS / warm:.1f} tokens/s (median of {repeats})")


if __name__ == "__main__":
    backend = _backend.load(sys.argv[1] if len(sys.argv) > 1 else _backend.selected())
    if backend.BACKEND == "torch":
        import torch

        torch.set_num_threads(1)  # as bench_torch.py runs it
        against_transformers(backend)
    else:
        tokens_per_second(backend, how="eager" if backend.BACKEND == "mxnet" else "compiled steps")
