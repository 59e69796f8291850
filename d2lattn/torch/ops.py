"""Tensor helpers, the masked softmax, and the threads a small model runs on, in PyTorch."""

import contextlib
import functools

import numpy as np
import torch
from torch.nn import functional as F

from d2lattn import _checks

# --- threads -------------------------------------------------------------------
# A model of fewer than ONE_THREAD_BELOW parameters trains and generates on one intra-op thread;
# the count is set back when the call returns (or raises). Its kernels are too small to gain from
# PyTorch's threads, and each kernel waits for all of them at its end: on a CPU that other programs
# share, a thread taken off its core makes every kernel wait for the scheduler (chapter 3 ran 8x
# slower beside two busy processes; benchmarks/shared_cpu.py measures it).
ONE_THREAD_BELOW = 1_000_000


@contextlib.contextmanager
def _threads_for(model):
    """One intra-op thread while a small model runs, the count before afterwards."""
    before = torch.get_num_threads()
    if sum(p.numel() for p in model.parameters()) < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _threads_of_its_size(fn):
    """fn(model, ...) run under _threads_for(model)."""
    @functools.wraps(fn)
    def run(model, *args, **kwargs):
        with _threads_for(model):
            return fn(model, *args, **kwargs)
    return run


# --- tensor helpers ----------------------------------------------------------


def _dtype(dtype):
    """torch.float16 for torch.float16, "float16", np.float16; "bfloat16" too."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, dtype if isinstance(dtype, str) else np.dtype(dtype).name)


def tensor(data, dtype=None):
    x = data if torch.is_tensor(data) else torch.as_tensor(np.asarray(data))
    if dtype is not None:
        return x.to(_dtype(dtype))
    return x.float() if x.is_floating_point() else x


def to_numpy(x):
    """NumPy copy; bfloat16, which NumPy lacks, comes back as float32 (exactly)."""
    if not torch.is_tensor(x):
        return np.asarray(x)
    x = x.detach().cpu()
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


def ones(shape):
    return torch.ones(shape)


def zeros(shape):
    return torch.zeros(shape)


def arange(start, stop=None, step=1):
    x = np.arange(start, stop, step)
    return tensor(x if x.dtype.kind == "f" else x.astype(np.int32))


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    return tensor(np.random.default_rng(seed).normal(mean, std, shape))


def bmm(a, b):
    return torch.bmm(a, b)


def matmul(a, b):
    return torch.matmul(a, b)


def reshape(x, shape):
    return torch.reshape(x, tuple(shape))


def concat(xs, axis=0):
    return torch.cat(list(xs), axis)


def stack(xs, axis=0):
    return torch.stack(list(xs), axis)


def swapaxes(x, axis1, axis2):
    return torch.swapaxes(x, axis1, axis2)


def exp(x):
    return torch.exp(x)


def tanh(x):
    return torch.tanh(x)

# --- masking -------------------------------------------------------------------


def _readable(x):
    """Whether x's values can be read: not while torch.compile or torch.export traces, nor when x
    is a torch.func transform's own tensor (an argument mapped by vmap, or one it computed)."""
    return not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(x)


def lengths(valid_lens, scores_shape, device=None):
    """`valid_lens` as integers shaped to broadcast against scores (b, ..., q, k)."""
    given = torch.as_tensor(valid_lens, device=device)
    lens = given.reshape(_checks.lens_view(given.shape, scores_shape, given.dtype))  # (b, 1.., 1) or (b, 1.., q, 1)
    if _readable(given):  # the reshaped copy of a constant is torch.func's own tensor
        _checks.check_lens_values(to_numpy(given))               # whole numbers, none negative
    return lens.long() if _checks.lens_need_cast(lens.dtype) else lens  # a float length counts like an integer


def keep_mask(scores_shape, valid_lens=None, mask=None, device=None):
    """Boolean tensor broadcastable to the scores: True where a query may attend, or None."""
    keep = None
    if valid_lens is not None:
        keep = torch.arange(scores_shape[-1], device=device) < lengths(valid_lens, scores_shape, device)
    if mask is not None:
        mask = torch.as_tensor(mask, device=device)
        _checks.check_mask(mask.shape, scores_shape, mask.dtype)
        keep = mask if keep is None else keep & mask
    return keep


def masked_softmax(X, valid_lens=None, *, mask=None):
    keep = keep_mask(X.shape, valid_lens, mask, X.device)
    if keep is None:
        return F.softmax(X, dim=-1)
    # The lowest finite number, not -inf: an empty row stays finite (uniform)
    # on the way through softmax, and is then zeroed with every masked weight.
    scores = X.masked_fill(~keep, torch.finfo(X.dtype).min)       # (..., q, k)
    return F.softmax(scores, dim=-1).masked_fill(~keep, 0.0)


def causal_mask(num_queries, num_keys=None, *, offset=0, window=None):
    num_keys = num_queries if num_keys is None else num_keys
    offset, window = _checks.checked_integer("offset", offset), _checks.checked_window(window)
    i = torch.arange(num_queries).unsqueeze(1) + offset           # (q, 1): the queries' positions
    j = torch.arange(num_keys)                                    # (k,): the keys' positions
    keep = j <= i                                                 # (q, k)
    return keep if window is None else keep & (i - j < window)
