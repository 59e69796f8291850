"""Helpers the component test files share: NumPy-drawn tensors and weights, the same starting
weights on every backend, and the bad-input check (each component file has a BAD_INPUT table)."""

import math

import numpy as np
import pytest

from d2lattn import numpy as reference


def t(d2l, *shape, dtype=None):
    """A normal tensor of `shape`, drawn by NumPy (the same on every backend)."""
    return d2l.tensor(np.random.default_rng(0).normal(size=shape), dtype)


def ints(d2l, *values):
    return d2l.tensor(np.array(values, dtype=np.int32))


def random_params(module, rng, scale=1.0):
    """Canonical parameters of the reference `module`'s shapes, uniform in +-scale/sqrt(fan-in), drawn from `rng`."""
    return {n: scale * rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0])
            for n, p in reference.get_params(module).items()}


def portable_lm_init(d2l, model, seed):
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


def portable_seq2seq_init(d2l, model, seed, num_hiddens):
    """The same starting weights on every backend, drawn by NumPy: embeddings N(0, 1), the rest
    uniform in +-1/sqrt(num_hiddens) (PyTorch's defaults for these layers)."""
    rng = np.random.default_rng(seed)
    bound = 1 / math.sqrt(num_hiddens)
    params = {name: rng.normal(size=p.shape) if name.endswith("embedding") else rng.uniform(-bound, bound, p.shape)
              for name, p in sorted(d2l.get_params(model).items())}
    d2l.set_params(model, params)
    return params


def portable_init(d2l, model, seed, draw=None):
    """The same starting weights on every backend, drawn by NumPy in the order of the parameters'
    names: LayerNorm gains ones, LayerNorm shifts and every bias zeros, every dense map W (in, out)
    uniform in +-1/sqrt(in), and whatever `draw(leaf, shape, rng)` returns (not None) for the rest."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in sorted(d2l.get_params(model).items()):
        leaf = name.rpartition(".")[2]
        special = None if draw is None else draw(leaf, p.shape, rng)
        if special is not None:
            params[name] = special
        elif leaf == "gamma":
            params[name] = np.ones(p.shape)
        elif leaf == "beta" or leaf.startswith("b_"):
            params[name] = np.zeros(p.shape)
        else:
            params[name] = rng.uniform(-1, 1, p.shape) / math.sqrt(p.shape[0])
    d2l.set_params(model, params)
    return params


def portable_transformer_init(d2l, model, seed, num_hiddens):
    """portable_init with embeddings N(0, 1/num_hiddens): times sqrt(num_hiddens) they are N(0, 1),
    the sinusoids' scale."""
    def draw(leaf, shape, rng):
        return rng.normal(size=shape) / math.sqrt(num_hiddens) if leaf == "embedding" else None

    return portable_init(d2l, model, seed, draw)


def portable_vit_init(d2l, model, seed):
    """portable_init with the class token zeros and positions N(0, 0.02**2)."""
    def draw(leaf, shape, rng):
        if leaf == "cls_token":
            return np.zeros(shape)
        return rng.normal(0, 0.02, shape) if leaf == "pos_embedding" else None

    return portable_init(d2l, model, seed, draw)


def bad_input_test(table):
    """A test over `table` = {name: (call(d2l), error type, message regex)}: each bad call raises that
    error with that message, the same on every backend (the messages come from d2lattn/_checks.py)."""

    @pytest.mark.parametrize("name", table)
    def test_bad_input_is_named(d2l, name):
        call, error, message = table[name]
        with pytest.raises(error, match=message):
            call(d2l)

    return test_bad_input_is_named
