"""Flex attention: a score_mod and a mask_mod over tiles of queries and keys, skipping the tiles the
mask empties (d2lattn/_tiles.py classifies them), with a recomputing custom VJP; the ready-made mods.

The tiles are block_size x block_size, the inputs padded to whole blocks, and a lax.fori_loop runs
over the list of tiles that are not empty (an input of the compiled loop, so masks with as many
tiles share one compilation); lax.cond evaluates the mask_mod only in a partial tile.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from d2lattn import _checks, _tiles
from d2lattn.jax.encoding import alibi_slopes
from d2lattn.jax.ops import take, tensor


@jax.tree_util.register_pytree_node_class
class _Mod:
    """A mod as jax.jit sees it: the function, static, and the numbers it reads, traced, so that
    causal_mod(offset) compiles once for every offset (a plain function has no numbers: static)."""

    def __init__(self, fn, params=()):
        self.fn, self.params = fn, tuple(params)

    def __call__(self, *args):
        return self.fn(*self.params, *args)

    def tree_flatten(self):
        return self.params, self.fn

    @classmethod
    def tree_unflatten(cls, fn, params):
        return cls(fn, params)


def _as_mod(mod):
    return mod if mod is None or isinstance(mod, _Mod) else _Mod(mod)


def _index(lead, q_start, q_size, k_start, k_size, xp=jnp):
    """b, h, q_idx, kv_idx: int32 arrays shaped to broadcast against a tile's scores (*lead, qb, kb);
    h indexes axis 1 of 4-d inputs (0 for 3-d ones). The starts may be traced. xp=np: NumPy arrays,
    which block_mask evaluates ready-made mods on without compiling an operation per shape."""
    rank = len(lead) + 2
    b = xp.arange(lead[0], dtype=xp.int32).reshape((-1,) + (1,) * (rank - 1))          # (b, 1, .., 1)
    h = xp.arange(lead[1] if rank > 3 else 1, dtype=xp.int32).reshape((1, -1) + (1,) * (rank - 2))
    i = (q_start + xp.arange(q_size, dtype=xp.int32)).reshape((1,) * (rank - 2) + (-1, 1))  # (1, .., qb, 1)
    j = (k_start + xp.arange(k_size, dtype=xp.int32)).reshape((1,) * (rank - 1) + (-1,))    # (1, .., 1, kb)
    return b, h, i, j


def _masked(scores, lens, mask_mod, index, num_keys):
    """-inf where the mask_mod (None in a full tile: not evaluated), the lengths or the padding past
    `num_keys` (None: no padding) drop a key."""
    keep = None if mask_mod is None else mask_mod(*index)                     # (..., qb, kb)
    for bound in (lens, num_keys):
        if bound is not None:
            keep = index[3] < bound if keep is None else keep & (index[3] < bound)
    return scores if keep is None else jnp.where(keep, scores, -jnp.inf)


def _raw_scores(queries, keys):
    return queries @ jnp.swapaxes(keys, -1, -2) / math.sqrt(queries.shape[-1])  # (..., qb, kb)


def _tile_scores(queries, keys, lens, score_mod, mask_mod, index, num_keys=None):
    """Scores of one tile (..., qb, kb): scaled, through score_mod, masked."""
    scores = _raw_scores(queries, keys)
    return _masked(scores if score_mod is None else score_mod(scores, *index), lens, mask_mod, index, num_keys)


def _padded(x, block_size, axis=-2):
    """x padded with zeros to a whole number of blocks along `axis` (at least one block)."""
    size = x.shape[axis]
    pad = max(-size % block_size, block_size - size)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _rows(lens, start, block_size):
    """The lengths of query rows start:start + block_size (lengths padded to whole blocks)."""
    return lens if lens is None or lens.shape[-2] == 1 else lax.dynamic_slice_in_dim(lens, start, block_size, -2)


def _by_kind(partial, mask_mod, tile):
    """tile(mask_mod) in a partial tile, tile(None) in a full one: the mask is evaluated only where needed."""
    if mask_mod is None:
        return tile(None)
    return lax.cond(partial, lambda: tile(mask_mod), lambda: tile(None))


@functools.partial(jax.jit, static_argnums=(6,))
def _forward(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles):
    """The online softmax over the tiles: a running max m, sum l and output a for every query row,
    the rows of a tile's query block read and written back at each step."""
    lead, num_queries, num_keys = queries.shape[:-2], queries.shape[-2], keys.shape[-2]
    if not tiles[0].shape[0]:                                                   # every tile empty: every row
        return (jnp.zeros_like(queries, shape=(*queries.shape[:-1], values.shape[-1])),
                jnp.full_like(queries, -jnp.inf, shape=queries.shape[:-1]))
    pad_keys = None if num_keys % block_size == 0 else num_keys
    queries, keys, values = (_padded(x, block_size) for x in (queries, keys, values))  # whole blocks
    lens = lens if lens is None or lens.shape[-2] == 1 else _padded(lens, block_size)  # per-query rows: padded

    def step(n, carry):
        m, l, a = carry
        q0, k0 = tiles[0][n] * block_size, tiles[1][n] * block_size
        q = lax.dynamic_slice_in_dim(queries, q0, block_size, -2)               # (..., qb, d)
        k = lax.dynamic_slice_in_dim(keys, k0, block_size, -2)                  # (..., kb, d)
        v = lax.dynamic_slice_in_dim(values, k0, block_size, -2)                # (..., kb, dv)
        index = _index(lead, q0, block_size, k0, block_size)
        scores = _by_kind(tiles[2][n], mask_mod, lambda mod: _tile_scores(
            q, k, _rows(lens, q0, block_size), score_mod, mod, index, pad_keys))  # (..., qb, kb)
        m_i, l_i, a_i = (lax.dynamic_slice_in_dim(x, q0, block_size, -2) for x in carry)
        m_new = jnp.maximum(m_i, scores.max(-1, keepdims=True))                  # (..., qb, 1)
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)                      # an empty row has no max yet
        p = jnp.exp(scores - shift)                                              # (..., qb, kb), 0 where masked
        rescale = jnp.exp(m_i - shift)                                           # (..., qb, 1), old terms
        updated = (m_new, l_i * rescale + p.sum(-1, keepdims=True), a_i * rescale + p @ v)
        return tuple(lax.dynamic_update_slice_in_dim(x, u, q0, -2) for x, u in zip(carry, updated))

    rows = queries.shape[:-1]  # made *_like the queries, so under shard_map they vary over its axes like them
    init = (jnp.full_like(queries, -jnp.inf, shape=(*rows, 1)),                 # (..., q, 1) running max
            jnp.zeros_like(queries, shape=(*rows, 1)),                          # (..., q, 1) running sum
            jnp.zeros_like(queries, shape=(*rows, values.shape[-1])))           # (..., q, dv) running output
    m, l, a = lax.fori_loop(0, tiles[0].shape[0], step, init)
    out = a / jnp.where(l > 0, l, 1.0)                                          # (..., q, dv), empty row: 0
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)[..., 0]  # (..., q)
    return out[..., :num_queries, :], lse[..., :num_queries]


@functools.partial(jax.jit, static_argnums=(6,))
def _backward(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles, out, lse, d_out, d_lse):
    """FlashAttention-2's backward over the same tiles: each tile's probabilities are recomputed as
    exp(scores - lse), and score_mod is differentiated on the tile by jax.vjp."""
    lead, num_queries, num_keys = queries.shape[:-2], queries.shape[-2], keys.shape[-2]
    if not tiles[0].shape[0]:                                                   # nothing computed, no gradient
        return jnp.zeros_like(queries), jnp.zeros_like(keys), jnp.zeros_like(values)
    pad_keys, scale = None if num_keys % block_size == 0 else num_keys, 1 / math.sqrt(queries.shape[-1])
    # d scores = p * (d p - D) + p * d lse, with D = rowsum(d out * out)
    delta = ((d_out * out).sum(-1) - d_lse)[..., None]                          # (..., q, 1)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)[..., None]                     # (..., q, 1)
    queries, keys, values, d_out, delta, lse = (_padded(x, block_size) for x in (queries, keys, values, d_out,
                                                                                 delta, lse))
    lens = lens if lens is None or lens.shape[-2] == 1 else _padded(lens, block_size)  # per-query rows: padded

    def tile_grads(q, k, v, do, lse_i, delta_i, lens_i, index, mod):
        raw = _raw_scores(q, k)                                                 # (..., qb, kb)
        modded, pull = (raw, None) if score_mod is None else jax.vjp(lambda s: score_mod(s, *index), raw)
        p = jnp.exp(_masked(modded, lens_i, mod, index, pad_keys) - lse_i)       # (..., qb, kb)
        d_scores = p * (do @ jnp.swapaxes(v, -1, -2) - delta_i)                 # (..., qb, kb)
        if pull is not None:                                                    # back through score_mod
            (d_scores,) = pull(d_scores)
        return d_scores @ k * scale, jnp.swapaxes(d_scores, -1, -2) @ q * scale, jnp.swapaxes(p, -1, -2) @ do

    def step(n, carry):
        q0, k0 = tiles[0][n] * block_size, tiles[1][n] * block_size
        rows = [lax.dynamic_slice_in_dim(x, q0, block_size, -2) for x in (queries, d_out, lse, delta)]
        cols = [lax.dynamic_slice_in_dim(x, k0, block_size, -2) for x in (keys, values)]
        index = _index(lead, q0, block_size, k0, block_size)
        grads = _by_kind(tiles[2][n], mask_mod, lambda mod: tile_grads(
            rows[0], *cols, rows[1], rows[2], rows[3], _rows(lens, q0, block_size), index, mod))
        return tuple(lax.dynamic_update_slice_in_dim(x, lax.dynamic_slice_in_dim(x, start, block_size, -2) + g,
                                                     start, -2)
                     for x, g, start in zip(carry, grads, (q0, k0, k0)))

    init = (jnp.zeros_like(queries), jnp.zeros_like(keys), jnp.zeros_like(values))
    d_queries, d_keys, d_values = lax.fori_loop(0, tiles[0].shape[0], step, init)
    return d_queries[..., :num_queries, :], d_keys[..., :num_keys, :], d_values[..., :num_keys, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flex_vjp(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles):
    return _forward(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles)


def _flex_fwd(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles):
    out, lse = _forward(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles)
    return (out, lse), (queries, keys, values, lens, tiles, out, lse)


def _flex_bwd(score_mod, mask_mod, block_size, saved, grads):
    queries, keys, values, lens, tiles, out, lse = saved
    grads = _backward(queries, keys, values, lens, score_mod, mask_mod, block_size, tiles, out, lse, *grads)
    return (*grads, None, None)                                                 # lengths, tiles: no gradient


_flex_vjp.defvjp(_flex_fwd, _flex_bwd)


def _plan(queries, keys, mask_mod, block_size):
    """The BlockMask of the call (built, or the one given, checked): its mask_mod and tile list."""
    q, k, lead = queries.shape[-2], keys.shape[-2], queries.shape[:-2]
    heads = lead[1] if len(lead) > 1 else 1
    blocks = _tiles.checked(mask_mod, mask_mod, q, k, block_size, lead[0], heads)
    if blocks is None:
        blocks = _tiles.cached((mask_mod, q, k, block_size, lead[0], heads), lambda: block_mask(
            mask_mod, q, k, block_size, batch_size=lead[0], num_heads=heads))
    return blocks.mask_mod, tuple(jnp.asarray(t) for t in _tiles.tiles(blocks.kinds))


def _flex(queries, keys, values, lens, score_mod, mask_mod, block_size):
    mask_mod, tiles = _plan(queries, keys, mask_mod, block_size)
    return _flex_vjp(queries, keys, values, lens, _as_mod(score_mod), _as_mod(mask_mod), block_size, tiles)


def _checked_call(queries, keys, values, score_mod, mask_mod, block_size):
    return _checks.checked_flex_call(queries.shape, keys.shape, values.shape, score_mod, mask_mod, block_size)


def flex_attention(queries, keys, values, *, score_mod=None, mask_mod=None, block_size=128, return_lse=False):
    block_size = _checked_call(queries, keys, values, score_mod, mask_mod, block_size)
    out, lse = _flex(queries, keys, values, None, score_mod, mask_mod, block_size)  # (..., q, dv), (..., q)
    return (out, lse) if return_lse else out


def block_mask(mask_mod, num_queries, num_keys, block_size=128, *, batch_size=1, num_heads=1):
    """mask_mod evaluated one block of query rows at a time against every key, classified per tile;
    evaluated at once even inside jax.jit (ensure_compile_time_eval), as the tile list is static."""
    sizes, block_size, lead = _checks.checked_block_mask(mask_mod, num_queries, num_keys, block_size, batch_size,
                                                         num_heads)
    kinds = np.full((_tiles.num_blocks(sizes[0], block_size), _tiles.num_blocks(sizes[1], block_size)), _tiles.FULL,
                    dtype=np.int8)
    with jax.ensure_compile_time_eval():
        for n, q0 in enumerate(range(0, sizes[0], block_size)):
            if mask_mod is not None and sizes[1]:
                keep = mask_mod(*_index(lead, q0, min(block_size, sizes[0] - q0), 0, sizes[1], np))  # (.., qb, k)
                kinds[n] = _tiles.classify_rows(np.asarray(keep), block_size, sizes[1])
    return _tiles.BlockMask(kinds, mask_mod, *sizes, block_size, *lead)


# --- ready-made mods: the same arithmetic on every backend -----------------------------------------
# Cached where their arguments are plain numbers: the same causal_mod(offset) is the same function,
# whose block masks flex_attention keeps (d2lattn/_tiles.py); causal and window masks are _Mods, so
# jax.jit traces their offsets and compiles once for all of them.


@functools.cache
def causal_mod(offset=0):
    return _Mod(_causal, (_checks.checked_integer("offset", offset),))


def _causal(offset, b, h, q_idx, kv_idx):
    return kv_idx <= offset + q_idx


@functools.cache
def window_mod(window, offset=0):
    return _Mod(_window, (_checks.checked_positive_int("window", window), _checks.checked_integer("offset", offset)))


def _window(window, offset, b, h, q_idx, kv_idx):
    return (kv_idx <= offset + q_idx) & (offset + q_idx - kv_idx < window)


def document_mod(document_ids):
    ids = jnp.asarray(document_ids)                                      # (k,) or (b, k)
    _checks.checked_document_ids(ids.shape)
    if ids.ndim == 1:
        return lambda b, h, q_idx, kv_idx: take(ids, q_idx) == take(ids, kv_idx)
    return lambda b, h, q_idx, kv_idx: take(ids, b, q_idx) == take(ids, b, kv_idx)


@functools.cache
def prefix_lm_mod(prefix_length):
    prefix = _checks.checked_nonnegative_int("prefix_length", prefix_length)
    return lambda b, h, q_idx, kv_idx: (kv_idx < prefix) | (kv_idx <= q_idx)


def and_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(jnp.logical_and, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def or_mods(*mask_mods):
    return lambda b, h, q_idx, kv_idx: _fold(jnp.logical_or, [m(b, h, q_idx, kv_idx) for m in mask_mods])


def _fold(op, masks):
    result = masks[0]
    for mask in masks[1:]:
        result = op(result, mask)
    return result


@functools.cache
def alibi_mod(num_heads, offset=0):
    slopes, offset = alibi_slopes(num_heads), _checks.checked_integer("offset", offset)
    return lambda score, b, h, q_idx, kv_idx: score - take(slopes, h) * jnp.abs(offset + q_idx - kv_idx)


@functools.cache
def softcap_mod(cap):
    cap = _checks.checked_positive_number("cap", cap)
    return lambda score, b, h, q_idx, kv_idx: cap * jnp.tanh(score / cap)


def relative_bias_mod(table):
    table = tensor(table)                                                # (heads, 2 D + 1) floats
    reach = (table.shape[-1] - 1) // 2                                   # D: the largest distance told apart
    return lambda score, b, h, q_idx, kv_idx: score + take(table, h, jnp.clip(kv_idx - q_idx, -reach, reach) + reach)
