"""Rotary frequencies, backend-free: the inverse frequencies theta_i of plain, Llama 3's and
YaRN's RoPE, and YaRN's attention factor, computed in float64 once at construction as
Hugging Face's `modeling_rope_utils` computes them (tests/peer/ holds them to it); each
backend's RotaryPositionalEncoding turns them into its own constant."""

import math

import numpy as np

from d2lattn import _checks


def _llama3(theta, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    """Llama 3.1: wavelengths above L / low_freq_factor are slowed by `factor`, those below
    L / high_freq_factor kept, and the band between interpolated smoothly in L / wavelength."""
    wavelen = 2 * math.pi / theta                                    # (d/2,)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    scaled = np.where(wavelen > original_max_position_embeddings / low_freq_factor, theta / factor, theta)
    medium = ((wavelen >= original_max_position_embeddings / high_freq_factor)
              & (wavelen <= original_max_position_embeddings / low_freq_factor))
    return np.where(medium, (1 - smooth) * theta / factor + smooth * theta, scaled), 1.0


def _mscale(factor, mscale=1.0):
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(theta, base, factor, original_max_position_embeddings, beta_fast=32.0, beta_slow=1.0,
          attention_factor=None, mscale=None, mscale_all_dim=None, truncate=True):
    """YaRN (Peng et al.): frequencies that turn fewer than beta_slow times over the original
    context are interpolated (divided by `factor`), those that turn more than beta_fast times
    kept, with a linear ramp over the feature index between; cos and sin are then scaled by
    the attention factor 0.1 ln(factor) + 1, so the scores grow by its square."""
    d = 2 * len(theta)

    def correction_dim(rotations):                                   # the feature index turning `rotations` times
        return d * math.log(original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / ((high + 0.001 if low == high else high) - low), 0, 1)  # (d/2,)
    keep = 1 - ramp                                                  # 1: extrapolate (keep), 0: interpolate
    if attention_factor is None:
        attention_factor = (_mscale(factor, mscale) / _mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
                            else _mscale(factor))
    return theta / factor * (1 - keep) + theta * keep, float(attention_factor)


_SCALINGS = {"llama3": _llama3, "yarn": _yarn}


def rope_frequencies(head_size, base=10000.0, scaling=None):
    """-> (theta float64 (head_size / 2,), attention factor): theta_i = base ** (-2 i / head_size),
    rescaled by `scaling` ({"type": "llama3" or "yarn", ...}, see RotaryPositionalEncoding)."""
    d = _checks.checked_head_size(head_size)
    base = _checks.checked_positive_number("base", base)
    theta = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)      # (d/2,)
    if scaling is None:
        return theta, 1.0
    kind, fields = _checks.checked_rope_scaling(scaling)
    if kind == "yarn":
        return _yarn(theta, base, **fields)
    return _SCALINGS[kind](theta, **fields)
