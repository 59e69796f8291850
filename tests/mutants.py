"""Planted bugs, one at a time, against the suite: `python -m tests.mutants --backend torch`.

Each mutant is a source patch (file, old text, new text) that a user would notice and some tests
might not. The script copies the tree to a scratch directory, applies one patch at a time, runs
pytest there (the whole suite, or the files given with --tests, and any other pytest arguments,
stopping at the first failure) and prints, for each mutant, whether the suite caught it and the
first test that failed. A mutant whose old text is gone from its file is reported as stale, never as caught.
Slow (one pytest run per mutant), so not in the default nox sessions: `nox -s mutants`.
"""

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNING = "D2LATTN_MUTANT"  # set to the mutant's name in the runs below, where the tree is mutated on purpose
SKIPPED = (".git", ".nox", "build", "_build", "__pycache__", ".pytest_cache")  # not copied to the scratch tree


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    backend: str  # the backend whose suite it is for ("any" for backend-free code)
    path: str
    old: str
    new: str
    breaks: str  # what it breaks for a user


MUTANTS = [
    # --- backend-free
    Mutant("llama3-smoothing-swapped", "any", "d2lattn/rotary.py",
           "np.where(medium, (1 - smooth) * theta / factor + smooth * theta, scaled)",
           "np.where(medium, smooth * theta / factor + (1 - smooth) * theta, scaled)",
           "Llama 3's middle band interpolates the wrong way round: a jump at each band edge"),
    Mutant("temperature-ignored", "any", "d2lattn/sampling.py",
           'scaled = logits / _checks.checked_positive_number("temperature", temperature)',
           'scaled = logits + 0 * _checks.checked_positive_number("temperature", temperature)',
           "every temperature samples at 1 (still validated)"),
    Mutant("one-draw-per-batch", "any", "d2lattn/sampling.py",
           "u = rng.random(len(logits))[:, None]", "u = np.full((len(logits), 1), rng.random())",
           "every row of a batch gets the same uniform draw"),
    Mutant("beam-drops-finished", "any", "d2lattn/sampling.py",
           "finished.append((tokens[:-1], score, len(tokens)))", "tokens = tokens",
           "beam search forgets the hypotheses that ended; only those still live at num_steps count"),
    Mutant("length-penalty-plain-power", "any", "d2lattn/sampling.py",
           "return log_prob / ((5 + length) / 6) ** alpha", "return log_prob / length ** alpha",
           "beam search normalizes by L ** alpha, not Wu et al.'s ((5 + L) / 6) ** alpha as documented"),
    Mutant("length-penalty-ignored", "any", "d2lattn/sampling.py",
           "key=lambda f: length_normalized(f[1], f[2], length_penalty))",
           "key=lambda f: f[1])",
           "beam search ranks finished hypotheses by raw log P whatever length_penalty says"),
    Mutant("reference-decoder-positions-restart", "numpy", "d2lattn/numpy/transformer.py",
           "X = self.pos_encoding(X, offset=start, training=training)",
           "X = self.pos_encoding(X, training=training)",
           "the reference's step-by-step decoding puts every new token at position 0 (d2l's own slip)"),
    Mutant("reference-no-embedding-scale", "numpy", "d2lattn/numpy/transformer.py",
           'X = self.params["embedding"][np.asarray(tokens)] * math.sqrt(self.num_hiddens)',
           'X = self.params["embedding"][np.asarray(tokens)]',
           "the reference encoder's embeddings are not scaled by sqrt(num_hiddens)"),
    Mutant("show-source-truncated", "any", "d2lattn/notebook.py",
           'text = f"# {where}\\n{source}"', 'text = f"# {where}\\n{source[:len(source) // 2]}"',
           "show_source prints only the first half of the code"),
    Mutant("head-dim-not-read", "any", "d2lattn/hub.py",
           '"head_size": None if head * heads == h else head,', '"head_size": None,',
           "config.json's head_dim is ignored: Qwen3's and Gemma 3's checkpoints no longer fit their tensors"),
    Mutant("head-dim-written-from-hidden", "any", "d2lattn/hub.py",
           '"head_dim": head,', '"head_dim": h // heads,',
           "save_pretrained writes head_dim = hidden_size / num_attention_heads whatever the heads' width"),
    # --- torch
    Mutant("W_o-from-num_hiddens", "torch", "d2lattn/torch/attention.py",
           "self.W_o = nn.Linear(h_q, h, bias=bias)", "self.W_o = nn.Linear(h, h, bias=bias)",
           "W_o maps num_hiddens, not num_heads * head_size, features: heads of another width fail"),
    Mutant("scale-from-num-hiddens", "torch", "d2lattn/torch/decoder.py",
           "        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate,",
           "        q = q * (self.head_size / (self.W_q.in_features // self.num_heads)) ** 0.5\n"
           "        Y = self._attend(q, k, v, mask=mask, training=training, gate=gate,",
           "scores are scaled by 1 / sqrt(num_hiddens / num_heads), not 1 / sqrt(head_size)"),
    Mutant("tokenizer-without-decoder", "torch", "d2lattn/hub.py",
           "    return Tokenizer.from_file(str(file))",
           "    tokenizer = Tokenizer.from_file(str(file))\n    tokenizer.decoder = None\n    return tokenizer",
           "load_tokenizer drops the file's decoder: decoded text keeps its word-start marks and loses its spaces"),
    Mutant("tokenizer-decode-drops-a-token", "torch", "d2lattn/hub.py",
           "    return Tokenizer.from_file(str(file))",
           "    tokenizer = Tokenizer.from_file(str(file))\n"
           "    decode = tokenizer.decode\n"
           "    return type('Dropping', (), {'encode': tokenizer.encode,\n"
           "                                 'decode': lambda self, ids: decode(ids[:-1])})()",
           "the text decoded from generate's tokens lacks the last token"),
    Mutant("qk-norm-after-rope", "torch", "d2lattn/torch/decoder.py",
           """        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                      # per head, before the rotation
        if self.rope is not None:
            qk = self._rotate(torch.cat([q, k], 1), t)                 # at positions t .. t + T - 1, one set
            q, k = qk.split([self.num_heads, self.num_kv_heads], 1)    # of angles for the queries and the keys
""", """        if self.rope is not None:
            qk = self._rotate(torch.cat([q, k], 1), t)                 # at positions t .. t + T - 1, one set
            q, k = qk.split([self.num_heads, self.num_kv_heads], 1)    # of angles for the queries and the keys
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)                      # per head, before the rotation
""", "QK-norm after RoPE: the gains scale rotated features, not Qwen3's"),
    Mutant("sink-left-out", "torch", "d2lattn/torch/attention.py",
           "return masked_softmax(torch.cat([scores, sink], -1), mask=keep)[..., :-1]",
           "return masked_softmax(torch.cat([scores, sink], -1)[..., :-1], mask=keep[..., :-1])",
           "the sink is dropped before the softmax: it takes no weight, rows sum to 1"),
    Mutant("sink-kept-a-key-dropped", "torch", "d2lattn/torch/attention.py",
           "return masked_softmax(torch.cat([scores, sink], -1), mask=keep)[..., :-1]",
           "return masked_softmax(torch.cat([scores, sink], -1), mask=keep)[..., 1:]",
           "the sink's weight is kept in place of the first key's"),
    Mutant("gate-after-W_o", "torch", "d2lattn/torch/decoder.py",
           "Y = self._attend(q, k, v, mask=mask, training=training, gate=gate, logit_cap=self.logit_cap, sinks=sinks)",
           "Y = self._attend(q, k, v, mask=mask, training=training, logit_cap=self.logit_cap, sinks=sinks)\n"
           "        Y = Y if gate is None else Y * torch.sigmoid(self.W_gate(X))",
           "the output gate multiplies W_o's output, not each head's"),
    Mutant("cap-after-masking", "torch", "d2lattn/torch/attention.py",
           """    if logit_cap is not None:
        scores = logit_cap * torch.tanh(scores / logit_cap)
""", """    if logit_cap is not None and keep is not None:                  # masked to -inf, then capped to -cap
        scores, keep = logit_cap * torch.tanh(scores.masked_fill(~keep, -math.inf) / logit_cap), None
    elif logit_cap is not None:
        scores = logit_cap * torch.tanh(scores / logit_cap)
""", "soft-capping after the mask: a masked key's score becomes -cap, and it gets weight"),
    Mutant("yarn-factor-dropped", "torch", "d2lattn/torch/encoding.py",
           "cos, sin = (self.factor * angles.cos()).to(X.dtype), (self.factor * angles.sin()).to(X.dtype)",
           "cos, sin = angles.cos().to(X.dtype), angles.sin().to(X.dtype)",
           "YaRN's attention factor is never applied"),
    Mutant("cache-unused", "torch", "d2lattn/torch/decoder.py",
           "logits, cache = model(new, cache=cache, training=False)", "logits, cache = model(tokens, training=False)",
           "generate(use_cache=True) feeds the whole sequence at every step: quadratic"),
    Mutant("rolling-buffer-keeps-the-oldest", "torch", "d2lattn/torch/decoder.py",
           "return k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], position",
           "return k[:, :, :keep], v[:, :, :keep], position",
           "a window's buffer never moves on (the pointer is not advanced): it keeps the first positions"),
    Mutant("rolling-buffer-empty-slots-seen", "torch", "d2lattn/torch/decoder.py",
           "mask = mask & (torch.arange(n, device=X.device) >= n - T - t)", "mask = mask",
           "the zeros of a buffer's slots before position 0 are attended to as keys"),
    Mutant("rolling-position-restarts", "torch", "d2lattn/torch/decoder.py",
           "_rolled(k, v, self.window, t + T)", "_rolled(k, v, self.window, T)",
           "a window's position restarts at every call (wrap-around): keys rotated at the wrong positions"),
    Mutant("rolling-buffer-one-short", "torch", "d2lattn/torch/decoder.py",
           "keep = max(window - 1, 1)", "keep = max(window - 2, 1)",
           "a window's buffer keeps window - 2 positions: the oldest key in the window is lost"),
    Mutant("per-layer-windows-reversed", "torch", "d2lattn/torch/decoder.py",
           'zip(_checks.per_layer("window", window, L), ', 'zip(_checks.per_layer("window", window, L)[::-1], ',
           "per-layer windows go to the wrong layers"),
    Mutant("final-cap-ignored", "torch", "d2lattn/torch/decoder.py",
           "logits = self.final_logit_cap * torch.tanh(logits / self.final_logit_cap)", "logits = logits",
           "final_logit_cap is accepted and never applied"),
    Mutant("norm-eps-final-only", "torch", "d2lattn/torch/decoder.py",
           "self.norm1 = RMSNorm(num_hiddens, norm_eps)", "self.norm1 = RMSNorm(num_hiddens)",
           "norm_eps does not reach the attention's norm"),
    Mutant("one-block", "torch", "d2lattn/torch/blockwise.py",
           'block_size = _checks.checked_positive_int("block_size", block_size)',
           'block_size = max(keys.shape[-2], _checks.checked_positive_int("block_size", block_size))',
           "blockwise_attention uses one block as large as all the keys: O(q k) memory"),
    Mutant("train-lm-lr-ignored", "torch", "d2lattn/torch/train.py",
           'return _fit("train_lm", model, batches, batch_loss, epochs, lr, clip, progress)',
           'return _fit("train_lm", model, batches, batch_loss, epochs, 1e-3, clip, progress)',
           "train_lm trains at 1e-3 whatever lr says"),
    Mutant("train-seq2seq-lr-ignored", "torch", "d2lattn/torch/train.py",
           'return _fit("train_seq2seq", model, batches, batch_loss, epochs, lr, clip, progress)',
           'return _fit("train_seq2seq", model, batches, batch_loss, epochs, 0.005, clip, progress)',
           "train_seq2seq trains at 0.005 whatever lr says"),
    Mutant("train-lm-counts-padding", "torch", "d2lattn/torch/train.py",
           "return sequence_loss(logits, labels, valid_lens)",
           "return sequence_loss(logits, labels, torch.full_like(valid_lens, labels.shape[1]))",
           "train_lm's loss counts the padding positions"),
    Mutant("sequence-loss-counts-padding", "torch", "d2lattn/torch/seq2seq.py",
           "return (nll * keep).sum() / keep.sum().clamp(min=1)", "return nll.mean()",
           "sequence_loss averages over every position, padding included"),
    Mutant("ffn-branch-no-dropout", "torch", "d2lattn/torch/decoder.py",
           "X = X + F.dropout(self._post(self.post_norm2, Y), self.rate, training)",
           "X = X + self._post(self.post_norm2, Y)", "the language model's blocks drop no dropout on the FFN branch"),
    Mutant("attention-branch-no-dropout", "torch", "d2lattn/torch/decoder.py",
           "X = X + F.dropout(self._post(self.post_norm1, Y), self.rate, training)",
           "X = X + self._post(self.post_norm1, Y)",
           "the language model's blocks drop no dropout on the attention branch"),
    Mutant("clip-not-applied", "torch", "d2lattn/torch/train.py",
           "nn.utils.clip_grad_norm_(model.parameters(), clip)", "nn.utils.clip_grad_norm_(model.parameters(), 1e9)",
           "clip= is accepted and never applied"),
    Mutant("generate-follows-module-mode", "torch", "d2lattn/torch/decoder.py",
           "logits, cache = model(new, cache=cache, training=False)", "logits, cache = model(new, cache=cache)",
           "generate drops out if the model was left in training mode"),
    Mutant("greedy-decode-follows-module-mode", "torch", "d2lattn/torch/seq2seq.py",
           "logits, state = model.decoder(token, state, training=False)", "logits, state = model.decoder(token, state)",
           "greedy_decode drops out if the model was left in training mode"),
    Mutant("seed-ignored", "torch", "d2lattn/torch/decoder.py",
           "np.random.default_rng(seed)", "np.random.default_rng(0)",
           "every seed samples the same tokens"),
    Mutant("merge-no-inf-guard", "torch", "d2lattn/torch/blockwise.py",
           "shift = torch.where(top.isfinite(), top, 0.0)\n    weights", "shift = top\n    weights",
           "merge_attention gives NaN for a row empty in every part"),
    Mutant("merge-no-shift", "torch", "d2lattn/torch/blockwise.py",
           "top = lses.amax(0).detach()", "top = torch.zeros_like(lses[0])",
           "merge_attention overflows for log-sum-exps near 100 and beyond"),
    Mutant("delta-keys-not-normalized", "torch", "d2lattn/torch/linear.py",
           "    k = _l2_normalized(keys)                                           # (..., T, dk)",
           "    k = keys                                                           # (..., T, dk)",
           "the delta rule on raw keys: beta k k^T is no projection, and the state blows up with |k|"),
    Mutant("delta-decay-after-update", "torch", "d2lattn/torch/linear.py",
           """        S = torch.exp(log_alpha[..., t, None, None]) * S               # (..., dk, dv)
        error = v[..., t, :] - (k[..., t, :, None] * S).sum(-2)        # (..., dv): v_t - S^T k_t
        S = S + k[..., t, :, None] * (beta[..., t, None] * error)[..., None, :]
""", """        error = v[..., t, :] - (k[..., t, :, None] * S).sum(-2)        # (..., dv): v_t - S^T k_t
        S = S + k[..., t, :, None] * (beta[..., t, None] * error)[..., None, :]
        S = torch.exp(log_alpha[..., t, None, None]) * S               # (..., dk, dv)
""", "the recurrent delta rule decays after writing: the new value is decayed too, and the error is "
             "measured against the undecayed state"),
    Mutant("delta-chunk-boundary-off-by-one", "torch", "d2lattn/torch/linear.py",
           "k_decayed[..., i, :, :].transpose(-1, -2) @ new",
           "k_decayed[..., i, :-1, :].transpose(-1, -2) @ new[..., :-1, :]",
           "the state carried to the next chunk leaves out each chunk's last position"),
    Mutant("linear-normaliser-missing", "torch", "d2lattn/torch/linear.py",
           "    return _read(numerator, denominator[..., None]), S, z + k.sum(-2)",
           "    return numerator, S, z + k.sum(-2)",
           "linear attention without its normaliser (parallel and chunked forms): outputs grow with the length"),
    Mutant("gdn-conv-sees-the-future", "torch", "d2lattn/torch/linear.py",
           "conv = sum(self.conv[i] * mixed[:, i:i + T] for i in range(K))",
           "conv = sum(self.conv[i] * torch.roll(mixed, -1, 1)[:, i:i + T] for i in range(K))",
           "GatedDeltaNet's convolution reads one position ahead: not causal"),
    Mutant("gdn-state-not-handed-on", "torch", "d2lattn/torch/linear.py",
           "return self.W_o(out.reshape(b, T, H * dv)), (mixed[:, mixed.shape[1] - (K - 1):], S)",
           "return self.W_o(out.reshape(b, T, H * dv)), (mixed[:, mixed.shape[1] - (K - 1):], cache[1])",
           "GatedDeltaNet hands back the state it was given: what each piece writes is lost to the next"),
    Mutant("gdn-conv-state-dropped", "torch", "d2lattn/torch/linear.py",
           "return self.W_o(out.reshape(b, T, H * dv)), (mixed[:, mixed.shape[1] - (K - 1):], S)",
           "return self.W_o(out.reshape(b, T, H * dv)), (torch.zeros_like(cache[0]), S)",
           "GatedDeltaNet's cache forgets the convolution's last inputs: each piece's convolution starts from zeros"),
    Mutant("hybrid-state-not-carried", "torch", "d2lattn/torch/decoder.py",
           "            caches.append(block_cache)\n",
           "            caches.append(None if isinstance(block.attention, GatedDeltaNet) else block_cache)\n",
           "TransformerLM hands back no state for its GatedDeltaNet blocks: every generate step restarts them"),
    Mutant("hybrid-layer-kinds-reversed", "torch", "d2lattn/torch/decoder.py",
           "kinds = _checks.checked_layer_kinds(attention, L, mla, gated_deltanet)",
           "kinds = _checks.checked_layer_kinds(attention, L, mla, gated_deltanet)[::-1]",
           "TransformerLM applies its per-layer attention list last layer first: three linear then one full "
           "becomes one full then three linear"),
    Mutant("hybrid-gdn-sizes-ignored", "torch", "d2lattn/torch/decoder.py",
           """GatedDeltaNet(num_hiddens, **{"num_heads": num_heads, "norm_eps": norm_eps,
                                                           **gated_deltanet})""",
           """GatedDeltaNet(num_hiddens, **{"num_heads": num_heads, "norm_eps": norm_eps})""",
           "TransformerLM's gated_deltanet dict is checked, then ignored: its linear layers have the default sizes"),
    Mutant("hybrid-gdn-default-eps", "torch", "d2lattn/torch/decoder.py",
           """GatedDeltaNet(num_hiddens, **{"num_heads": num_heads, "norm_eps": norm_eps,""",
           """GatedDeltaNet(num_hiddens, **{"num_heads": num_heads,""",
           "TransformerLM's linear layers normalise with GatedDeltaNet's default eps, not the model's norm_eps"),
    Mutant("mla-rope-on-nope", "torch", "d2lattn/torch/latent.py",
           'q_nope, q_rope = self._queries(X).split([dn, s["qk_rope_head_size"]], -1)',
           'q_rope, q_nope = self._queries(X).split([s["qk_rope_head_size"], dn], -1)',
           "MultiHeadLatentAttention rotates the first features of each query head, not its rotary part"),
    Mutant("mla-no-kv-norm", "torch", "d2lattn/torch/latent.py",
           "c = self.kv_norm(self.W_dkv(X))", "c = self.W_dkv(X)",
           "MultiHeadLatentAttention caches the latent without its RMSNorm"),
    Mutant("mla-scale-nope-only", "torch", "d2lattn/torch/latent.py",
           "self.scale = 1 / math.sqrt(dn + dr)", "self.scale = 1 / math.sqrt(dn)",
           "MultiHeadLatentAttention scales the scores by the non-rotary head size only"),
    Mutant("mla-absorbed-W_uk-transposed", "torch", "d2lattn/torch/latent.py",
           'q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, W_uk)',
           'q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, self.W_uk.weight.t().reshape(heads, dn, -1))',
           "the absorbed MultiHeadLatentAttention folds W_uk in with its layout transposed"),
    Mutant("no-embedding-scale", "torch", "d2lattn/torch/transformer.py",
           "X = self.embedding(X) * math.sqrt(self.num_hiddens)", "X = self.embedding(X)",
           "the decoder's embeddings are not scaled by sqrt(num_hiddens)"),
    Mutant("decoder-cache-dropped", "torch", "d2lattn/torch/transformer.py",
           "x, caches[i] = block.step(x, enc_outputs, enc_valid_lens, caches[i], training=training)",
           "x, caches[i] = block.step(x, enc_outputs, enc_valid_lens, None, training=training)",
           "each decoding step sees only itself, not the positions before it"),
    Mutant("alignment-of-the-first-block", "torch", "d2lattn/torch/seq2seq.py",
           "return weights[-1][1].mean(1) if isinstance(weights, list) else weights",
           "return weights[0][1].mean(1) if isinstance(weights, list) else weights",
           "Seq2Seq.attention_weights of a Transformer are the first block's, not the last's"),
    Mutant("beam-follows-module-mode", "torch", "d2lattn/torch/seq2seq.py",
           "logits = model.decoder(torch.as_tensor(prefixes, device=device), state, training=False)[0]",
           "logits = model.decoder(torch.as_tensor(prefixes, device=device), state)[0]",
           "beam_search drops out if the model was left in training mode"),
    # the Vision Transformer (the reference's, below, are caught by tests/test_vision.py's closed forms)
    Mutant("patch-channels-first", "torch", "d2lattn/torch/vision.py",
           "X.permute(0, 1, 3, 2, 4, 5)", "X.permute(0, 1, 3, 5, 2, 4)",
           "a patch flattens channel by channel, not in the documented (row, column, channel) order"),
    Mutant("patch-grid-column-major", "torch", "d2lattn/torch/vision.py",
           "X.permute(0, 1, 3, 2, 4, 5)", "X.permute(0, 3, 1, 2, 4, 5)",
           "patches are read down the columns of the grid, not along its rows"),
    Mutant("cls-token-appended", "torch", "d2lattn/torch/vision.py",
           "torch.cat([cls, X], dim=1)", "torch.cat([X, cls], dim=1)",
           "the class token goes last, and the head reads the first patch instead"),
    Mutant("gelu-tanh", "torch", "d2lattn/torch/vision.py",
           'F.gelu(X, approximate="none")', 'F.gelu(X, approximate="tanh")',
           "the ViT's MLP uses the tanh approximation of GELU, not the documented exact one"),
    Mutant("vit-post-norm", "torch", "d2lattn/torch/vision.py",
           "        Y = self.norm1(X)                                              # pre-norm: normalize, then attend\n"
           "        X = X + self.attention(Y, Y, Y, valid_lens, training=training)  # (b, T, h)\n"
           "        return X + self.mlp(self.norm2(X), training=training)         # (b, T, h)\n",
           "        X = self.norm1(X + self.attention(X, X, X, valid_lens, training=training))\n"
           "        return self.norm2(X + self.mlp(X, training=training))\n",
           "the ViT block normalizes after each residual sum (post-norm), not before each branch"),
    Mutant("train-classifier-lr-ignored", "torch", "d2lattn/torch/train.py",
           'return _fit("train_classifier", model, batches, batch_loss, epochs, lr, clip, progress)',
           'return _fit("train_classifier", model, batches, batch_loss, epochs, 1e-3, clip, progress)',
           "train_classifier trains at 1e-3 whatever lr says"),
    # --- jax
    Mutant("cache-unused", "jax", "d2lattn/jax/decoder.py",
           "        if use_cache and t > T0:\n", "        if False:\n",
           "generate(use_cache=True) runs the whole buffer at every step"),
    Mutant("one-block", "jax", "d2lattn/jax/blockwise.py",
           "block_size = min(block_size, max(keys.shape[-2], queries.shape[-2], 1))",
           "block_size = max(keys.shape[-2], queries.shape[-2], 1)",
           "blockwise_attention uses one block as large as all the keys"),
    Mutant("train-lm-lr-ignored", "jax", "d2lattn/jax/train.py",
           'return _fit("train_lm", model, _lm_step, batches, epochs=epochs, lr=lr,',
           'return _fit("train_lm", model, _lm_step, batches, epochs=epochs, lr=1e-3,',
           "train_lm trains at 1e-3 whatever lr says"),
    Mutant("train-lm-counts-padding", "jax", "d2lattn/jax/train.py",
           "        return sequence_loss(logits, labels, valid_lens)\n",
           "        return sequence_loss(logits, labels, jnp.full_like(valid_lens, labels.shape[1]))\n",
           "train_lm's loss counts the padding positions"),
    Mutant("short-batch-padding-counted", "jax", "d2lattn/jax/train.py",
           "grown[weight] = np.where(np.arange(rows) < n, grown[weight], 0).astype(grown[weight].dtype)",
           "grown[weight] = grown[weight]",
           "a short last batch's loss and gradients count the copies that pad it"),
    Mutant("ffn-branch-no-dropout", "jax", "d2lattn/jax/decoder.py",
           "X = X + drop(self._post(self.post_norm2, self.ffn(self.norm2(X))))",
           "X = X + self._post(self.post_norm2, self.ffn(self.norm2(X)))",
           "the language model's blocks drop no dropout on the FFN branch"),
    Mutant("clip-not-applied", "jax", "d2lattn/jax/train.py",
           "optax.clip_by_global_norm(clip)", "optax.clip_by_global_norm(1e9)",
           "clip= is accepted and never applied"),
    Mutant("generate-follows-module-mode", "jax", "d2lattn/jax/decoder.py",
           "(tokens, cache=cache, training=False, position=position)", "(tokens, cache=cache, position=position)",
           "generate drops out if the model was left in training mode"),
    Mutant("merge-no-inf-guard", "jax", "d2lattn/jax/blockwise.py",
           "shift = jnp.where(jnp.isfinite(top), top, 0.0)\n    weights", "shift = top\n    weights",
           "merge_attention gives NaN for a row empty in every part"),
    Mutant("mla-absorbed-W_uk-transposed", "jax", "d2lattn/jax/latent.py",
           'q_latent = jnp.einsum("bhtn,rhn->bhtr", q_nope, W_uk)',
           'q_latent = jnp.einsum("bhtn,rhn->bhtr", q_nope, self.W_uk.kernel[...].T.reshape(-1, heads, dn))',
           "the absorbed MultiHeadLatentAttention folds W_uk in with its layout transposed"),
    # --- mxnet (its hybridized GatedDeltaNet: the harness's compiled cases and tests/native/test_mxnet.py)
    Mutant("mxnet-graph-gdn-forgets-state", "mxnet", "d2lattn/mxnet/linear.py",
           "_l2_normalized(k), v, log_alpha, beta, S)", "_l2_normalized(k), v, log_alpha, beta, 0 * S)",
           "a hybridized GatedDeltaNet reads a zero state whatever it is handed: every piece after the first "
           "(each generated token) forgets the sequence before it"),
    Mutant("mxnet-gdn-conv-taps-reversed", "mxnet", "d2lattn/mxnet/linear.py",
           "conv_out = sum(conv[i] * mixed[:, i:i - (K - 1) or None] for i in range(K))",
           "conv_out = sum(conv[K - 1 - i] * mixed[:, i:i - (K - 1) or None] for i in range(K))",
           "GatedDeltaNet's convolution weights run back to front (newest input times the oldest tap)"),
    # --- numpy (the reference: tests/test_vision.py's closed forms and the convolution catch these)
    Mutant("patch-channels-first", "numpy", "d2lattn/numpy/vision.py",
           "X.transpose(0, 1, 3, 2, 4, 5)", "X.transpose(0, 1, 3, 5, 2, 4)",
           "a patch flattens channel by channel, not in the documented (row, column, channel) order"),
    Mutant("cls-token-appended", "numpy", "d2lattn/numpy/vision.py",
           "np.concatenate([cls, X], axis=1)", "np.concatenate([X, cls], axis=1)",
           "the class token goes last, and the head reads the first patch instead"),
    Mutant("gelu-tanh", "numpy", "d2lattn/numpy/vision.py",
           "return 0.5 * X * (1.0 + _erf(X / math.sqrt(2.0)))",
           "return 0.5 * X * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)))",
           "the reference's MLP uses the tanh approximation of GELU"),
    Mutant("vit-post-norm", "numpy", "d2lattn/numpy/vision.py",
           "        Y = self.norm1(X)                                              # pre-norm: normalize, then attend\n"
           "        X = X + self.attention(Y, Y, Y, valid_lens, training=training)  # (b, T, h)\n"
           "        return X + self.mlp(self.norm2(X), training=training)         # (b, T, h)\n",
           "        X = self.norm1(X + self.attention(X, X, X, valid_lens, training=training))\n"
           "        return self.norm2(X + self.mlp(X, training=training))\n",
           "the reference's ViT block is post-norm"),
    Mutant("mla-scale-nope-only", "numpy", "d2lattn/numpy/latent.py",
           "self.scale = 1 / math.sqrt(dn + dr)", "self.scale = 1 / math.sqrt(dn)",
           "the reference MultiHeadLatentAttention scales by the non-rotary head size only"),
    Mutant("mla-no-kv-norm", "numpy", "d2lattn/numpy/latent.py",
           'c = self.kv_norm(X @ p["W_dkv"])', 'c = X @ p["W_dkv"]',
           "the reference MultiHeadLatentAttention caches the latent without its RMSNorm"),
]


def run(mutant, scratch, backend, tests, python):
    """(verdict, first failing test) for one mutant applied in `scratch`."""
    path = scratch / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
        return "stale", f"its old text occurs {original.count(mutant.old)} times in {mutant.path}"
    path.write_text(original.replace(mutant.old, mutant.new))
    try:
        done = subprocess.run([python, "-m", "pytest", f"--backend={backend}", "-x", "-q", "-rf",
                               "-p", "no:cacheprovider", *tests], cwd=scratch, capture_output=True, text=True,
                              env={**os.environ, RUNNING: mutant.name})
    finally:
        path.write_text(original)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    if done.returncode == 0:
        return "survived", ""
    return "caught", failed[0] if failed else done.stdout.strip().splitlines()[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--tests", nargs="*", default=["tests"], help="test files or directories (default: all)")
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: every one for the backend)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter with the backend's framework")
    args, pytest_args = parser.parse_known_args(argv)  # the rest (--ignore=..., -k ...) goes to pytest
    chosen = [m for m in MUTANTS if m.backend in (args.backend, "any") and (not args.only or m.name in args.only)]
    caught = 0
    with tempfile.TemporaryDirectory(prefix="d2lattn-mutants-") as tmp:
        scratch = pathlib.Path(tmp)
        shutil.copytree(ROOT, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*SKIPPED))
        print(f"{len(chosen)} mutants on {args.backend}, tests: {' '.join(args.tests)}")
        for mutant in chosen:
            verdict, detail = run(mutant, scratch, args.backend, [*args.tests, *pytest_args], args.python)
            caught += verdict == "caught"
            print(f"{verdict:9} {mutant.name:34} {detail or mutant.breaks}", flush=True)
    print(f"{caught} of {len(chosen)} caught")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
