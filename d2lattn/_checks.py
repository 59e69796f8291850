"""Argument checks shared by every backend, so bad input meets the same message everywhere.

They look only at Python numbers and shape tuples, which every framework
exposes the same way (static shapes, even while tracing). `checked_x(...)`
returns the value it checked (as a plain int or float); `check_x(...)`
returns None; each raises ValueError or TypeError naming the argument.
"""

import numbers

import numpy as np


def _fits(got, want):
    """Equal sizes, where None (unknown while tracing) matches anything."""
    return got is None or want is None or got == want


def dtype_name(dtype):
    """'int32', 'float16', 'bool', ... for any framework's dtype object."""
    if str(dtype).startswith("torch."):  # torch.int64 has no .name, and NumPy cannot read it
        return str(dtype).removeprefix("torch.")
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).removeprefix("torch.")


# --- scalars --------------------------------------------------------------------------


def checked_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def checked_positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def checked_integer(name, value):
    """Any integer (offsets may be negative)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def checked_dropout_rate(value, name="dropout"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def checked_window(value):
    """A sliding window: None (no window) or a positive number of positions."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"window must be None or an integer >= 1 (positions each query sees), got {value!r}")
    return int(value)


def per_layer(name, value, num_layers):
    """One value for every layer, or a list or tuple of one per layer: -> a list of num_layers."""
    if not isinstance(value, (list, tuple)):
        return [value] * num_layers
    if len(value) != num_layers:
        raise ValueError(f"{name} must be one value or a sequence of one per layer (num_layers = {num_layers}), "
                         f"got {len(value)} entries")
    return list(value)


# A TransformerLM layer's attention: "mha" a CausalSelfAttention (multi-head, grouped-query with
# num_kv_heads), "mla" a MultiHeadLatentAttention with the sizes in `mla`, "gated_deltanet" a
# GatedDeltaNet (a state of constant size, no K/V cache) with the sizes in `gated_deltanet`.
LAYER_KINDS = ("mha", "mla", "gated_deltanet")
# What `gated_deltanet` may set: GatedDeltaNet's own arguments (num_heads, norm_eps: the model's by default)
GATED_DELTANET_SIZES = ("num_heads", "head_size", "value_head_size", "conv_size", "norm_eps", "chunk_size")


def checked_layer_kinds(attention, num_layers, mla, gated_deltanet=None):
    """TransformerLM's `attention`: one of LAYER_KINDS, or a sequence of one per layer -> a list;
    `mla` must be a dict (MultiHeadLatentAttention's keyword arguments) where a layer is "mla", and
    `gated_deltanet` a dict of GATED_DELTANET_SIZES ({} for GatedDeltaNet's defaults) where one is
    "gated_deltanet"."""
    kinds = per_layer("attention", attention, num_layers)
    for kind in kinds:
        if not isinstance(kind, str) or kind not in LAYER_KINDS:
            raise ValueError(f"attention must be one of {', '.join(map(repr, LAYER_KINDS))} or a sequence of one per "
                             f"layer, got {kind!r}")
    if "mla" in kinds and not isinstance(mla, dict):
        raise ValueError("mla must be a dict of MultiHeadLatentAttention's sizes (kv_lora_rank, qk_nope_head_size, "
                         f"qk_rope_head_size, v_head_size, ...) for the 'mla' layers, got {type(mla).__name__}")
    if "gated_deltanet" in kinds:
        sizes = ", ".join(GATED_DELTANET_SIZES)
        if not isinstance(gated_deltanet, dict):
            raise ValueError(f"gated_deltanet must be a dict of GatedDeltaNet's sizes ({sizes}; {{}} for its "
                             f"defaults) for the 'gated_deltanet' layers, got {type(gated_deltanet).__name__}")
        unknown = sorted(set(gated_deltanet) - set(GATED_DELTANET_SIZES), key=str)
        if unknown:
            raise ValueError(f"gated_deltanet: GatedDeltaNet takes {sizes}, not {', '.join(map(repr, unknown))}")
    return kinds


def check_divisible(num_hiddens, num_heads):
    if num_hiddens % num_heads:
        raise ValueError(
            f"num_hiddens ({num_hiddens}) must be divisible by num_heads ({num_heads})"
        )


def checked_attention_head_size(num_hiddens, num_heads, head_size):
    """Each attention head's width: head_size, a positive integer, or with None num_hiddens // num_heads
    (which must then divide evenly); Qwen3's and Gemma 3's heads are wider or narrower than that."""
    if head_size is None:
        check_divisible(num_hiddens, num_heads)
        return num_hiddens // num_heads
    return checked_positive_int("head_size", head_size)


def checked_kv_heads(num_heads, num_kv_heads):
    """num_kv_heads (None: num_heads) must divide num_heads; returns it as an int."""
    if num_kv_heads is None:
        return num_heads
    checked_positive_int("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
    return int(num_kv_heads)


def checked_head_size(value):
    """Rotary encoding rotates pairs of features: an even, positive head_size."""
    checked_positive_int("head_size", value)
    if value % 2:
        raise ValueError(f"head_size must be even (rotary encoding rotates pairs of features), got {value}")
    return int(value)


# --- lengths --------------------------------------------------------------------------


def lens_need_cast(dtype):
    """Lengths are integers, or floats holding whole numbers (MXNet's np.array([2, 3]) is
    float32). Returns True when the backend must cast them to integers (a float dtype);
    under tracing only the dtype is known, and a fractional length is cast (truncated)."""
    name = dtype_name(dtype)
    if name.startswith(("int", "uint")):
        return False
    if name.startswith(("float", "bfloat")):
        return True
    raise TypeError(f"valid_lens must be integers (or floats holding whole numbers), got dtype {name}")


def lens_view(lens_shape, scores_shape, dtype=None):
    """Where `valid_lens` lines up with the scores, as a shape to reshape it to.

    (b,) -> (b, 1, ..., 1) applies to every query of a sequence;
    (b, q) -> (b, 1, ..., q, 1) gives each query its own length.
    Checks the shape, and the dtype where given (integers, or floats holding whole numbers).
    """
    if dtype is not None:
        lens_need_cast(dtype)
    lens_shape, scores_shape = tuple(lens_shape), tuple(scores_shape)
    if len(scores_shape) < 2:
        raise ValueError(f"valid_lens needs scores with axes (batch, ..., queries, keys), got shape {scores_shape}")
    b, q = scores_shape[0], scores_shape[-2]
    if len(lens_shape) not in (1, 2) or not _fits(lens_shape[0], b) or (
        len(lens_shape) == 2 and not _fits(lens_shape[1], q)
    ):
        raise ValueError(
            f"valid_lens must have shape (batch,) = ({b},) or (batch, queries) = ({b}, {q}), "
            f"got {lens_shape}"
        )
    pad = (1,) * (len(scores_shape) - len(lens_shape) - 1)
    return tuple(-1 if n is None else n for n in lens_shape[:1] + pad + lens_shape[1:] + (1,))


def check_lens_values(values):
    """Lengths count keys, where their values are known (eager calls): whole numbers (a float
    length must hold one), none negative (one beyond the number of keys means all)."""
    values = np.asarray(values, dtype=np.float64)
    fractional = values[values != np.floor(values)]
    if fractional.size:
        raise ValueError(f"valid_lens must hold whole numbers of keys, got a fractional length {fractional[0]:g}")
    if values.size and values.min() < 0:
        raise ValueError(f"valid_lens must be >= 0, got a length of {int(values.min())}")


# --- masks and biases -----------------------------------------------------------------


def _broadcasts(shape, scores_shape):
    """`shape` broadcasts to `scores_shape` (None, unknown while tracing, fits any size)."""
    shape, scores_shape = tuple(shape), tuple(scores_shape)
    return len(shape) <= len(scores_shape) and all(
        m == 1 or _fits(m, s) for m, s in zip(reversed(shape), reversed(scores_shape))
    )


def check_mask(mask_shape, scores_shape, dtype):
    """A mask is boolean (True = may attend) and broadcasts to the scores."""
    if dtype_name(dtype) != "bool":
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {dtype_name(dtype)}")
    if not _broadcasts(mask_shape, scores_shape):
        raise ValueError(f"mask of shape {tuple(mask_shape)} does not broadcast to the scores' shape "
                         f"{tuple(scores_shape)} (batch, queries, keys)")


def check_score_bias(bias_shape, scores_shape):
    """score_bias broadcasts to the scores."""
    if not _broadcasts(bias_shape, scores_shape):
        raise ValueError(f"score_bias of shape {tuple(bias_shape)} does not broadcast to the scores' shape "
                         f"{tuple(scores_shape)}")


# --- shapes ---------------------------------------------------------------------------


def _same_leading_axes(q, k, v):
    """queries, keys and values agree on every axis before (positions, features)."""
    return all(_fits(a, b) and _fits(a, c) for a, b, c in zip(q[:-2], k[:-2], v[:-2]))


def _check_positions(k, v):
    if not _fits(k[-2], v[-2]):
        raise ValueError(f"keys and values must have the same number of positions (axis -2), got keys {k} "
                         f"and values {v}")


def check_attention_inputs(queries, keys, values, *, dot=False, sizes=None, batch_axes=1):
    """Check the shapes of (queries, keys, values): (b, q, d), (b, k, d'), (b, k, dv).

    `dot`: queries and keys must share their feature size. `sizes`: the feature
    sizes the module was constructed with, {"queries": n, "keys": n, "values": n}.
    `batch_axes`: how many leading batch axes are allowed (heads add one).
    """
    shapes = {"queries": tuple(queries), "keys": tuple(keys), "values": tuple(values)}
    for name, shape in shapes.items():
        if not 3 <= len(shape) <= 2 + batch_axes:
            raise ValueError(f"{name} must have 3 axes (batch, {'queries' if name == 'queries' else 'keys'}, "
                             f"features), got shape {shape}")
    q, k, v = shapes.values()
    if not (len(q) == len(k) == len(v) and _same_leading_axes(q, k, v)):
        raise ValueError(f"queries, keys and values must have the same batch size, got shapes {q}, {k} and {v}")
    _check_positions(k, v)
    if dot and not _fits(q[-1], k[-1]):
        raise ValueError(f"queries and keys must have the same feature size (last axis) for dot-product "
                         f"attention, got queries {q} and keys {k}")
    for name, size in (sizes or {}).items():
        if not _fits(shapes[name][-1], size):
            size_name = {"queries": "query_size", "keys": "key_size", "values": "value_size"}[name]
            raise ValueError(f"{name} must have {size} features (last axis), the {size_name} this module "
                             f"was built with, got shape {shapes[name]}")


def check_concat_inputs(queries, keys, values, sizes):
    """ConcatAttention: queries (b, q, query_size), keys (b, q, key_size): one key per
    query; values (b, num_values, value_size)."""
    expected = {
        "queries": ("(batch, queries, query_size)", (None, None, sizes["query_size"])),
        "keys": ("(batch, queries, key_size), one key per query", (queries[0], queries[1], sizes["key_size"])),
        "values": ("(batch, num_values, value_size)", (queries[0], sizes["num_values"], sizes["value_size"])),
    }
    for name, shape in (("queries", queries), ("keys", keys), ("values", values)):
        what, want = expected[name]
        if len(shape) != 3 or not all(_fits(a, b) for a, b in zip(shape, want)):
            sizes_text = ", ".join("?" if n is None else str(n) for n in want)
            raise ValueError(f"{name} must have shape {what} = ({sizes_text}), got {tuple(shape)}")


def check_block_inputs(queries, keys, values):
    """blockwise_attention: (..., q, d), (..., k, d), (..., k, dv) with the same leading axes."""
    q, k, v = tuple(queries), tuple(keys), tuple(values)
    if not (len(q) >= 3 and len(q) == len(k) == len(v)):
        raise ValueError(f"queries, keys and values must have the same number of axes, at least 3 "
                         f"(batch, ..., positions, features), got shapes {q}, {k} and {v}")
    if not _same_leading_axes(q, k, v):
        raise ValueError(f"queries, keys and values must have the same leading axes, got shapes {q}, {k} and {v}")
    _check_positions(k, v)
    if not _fits(q[-1], k[-1]):
        raise ValueError(f"queries and keys must have the same feature size (last axis), got queries {q} "
                         f"and keys {k}")


def check_merge_inputs(outputs, lses):
    """merge_attention: as many outputs (..., q, dv) as lses (..., q), at least one."""
    if len(outputs) != len(lses) or not outputs:
        raise ValueError(f"merge_attention needs one lse per output and at least one part, got "
                         f"{len(outputs)} outputs and {len(lses)} lses")
    for o, s in zip(outputs, lses):
        if tuple(o.shape[:-1]) != tuple(s.shape) or tuple(o.shape) != tuple(outputs[0].shape):
            raise ValueError(f"merge_attention: outputs must share one shape (..., q, dv) and lses be (..., q), "
                             f"got outputs {tuple(o.shape)} and lses {tuple(s.shape)}")


def check_features(name, shape, size, what):
    """The last axis of `name` holds `size` features."""
    if len(shape) < 1 or not _fits(shape[-1], size):
        raise ValueError(f"{name} must have {size} features (last axis), {what}, got shape {tuple(shape)}")


def check_sequence_input(X, num_hiddens, max_len=None, name="X"):
    """(batch, steps, num_hiddens), with at most `max_len` steps."""
    X = tuple(X)
    if len(X) != 3 or not _fits(X[-1], num_hiddens):
        raise ValueError(f"{name} must have shape (batch, steps, num_hiddens={num_hiddens}), got {X}")
    if max_len is not None and X[1] is not None and X[1] > max_len:
        raise ValueError(f"{name} has {X[1]} steps (axis 1), more than max_len={max_len}; "
                         "build the module with a larger max_len")


def check_tokens(shape, name="X"):
    """Token ids: (batch, steps)."""
    if len(tuple(shape)) != 2:
        raise ValueError(f"{name} must be token ids of shape (batch, steps), got {tuple(shape)}")


def check_recurrent_input(X, input_size, state=None, num_layers=None, num_hiddens=None):
    """X (batch, steps, input_size); state (num_layers, batch, num_hiddens) where given."""
    X = tuple(X)
    if len(X) != 3 or not _fits(X[-1], input_size):
        raise ValueError(f"X must have shape (batch, steps, input_size={input_size}), got {X}")
    if state is not None and not (len(tuple(state)) == 3 and all(
            _fits(a, b) for a, b in zip(tuple(state), (num_layers, X[0], num_hiddens)))):
        raise ValueError(f"state must have shape (num_layers, batch, num_hiddens) = "
                         f"({num_layers}, {X[0]}, {num_hiddens}), got {tuple(state)}")


def checked_size_pair(name, value):
    """An image or patch size: a positive integer (square) or a (height, width) pair of them."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0 for n in pair):
        raise ValueError(f"{name} must be a positive integer or a (height, width) pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def checked_patch_grid(image_size, patch_size):
    """(image (H, W), patch (P_h, P_w)): the patch must tile the image exactly."""
    image, patch = checked_size_pair("image_size", image_size), checked_size_pair("patch_size", patch_size)
    if image[0] % patch[0] or image[1] % patch[1]:
        raise ValueError(f"patch_size {patch} (height, width) must divide image_size {image} into whole patches")
    return image, patch


def check_images(shape, image_size, num_channels):
    """Channels-last images (batch, height, width, channels) of the size a module was built for."""
    shape = tuple(shape)
    want = (None, *image_size, num_channels)
    if len(shape) != 4 or not all(_fits(a, b) for a, b in zip(shape, want)):
        raise ValueError(f"images must have shape (batch, height, width, channels) = (b, {image_size[0]}, "
                         f"{image_size[1]}, {num_channels}), channels last, got {shape}")


def check_class_labels(labels_shape, batch):
    """One integer class label per image of a batch of `batch`."""
    if tuple(labels_shape) != (batch,):
        raise ValueError(f"labels must have shape (batch,) = ({batch},), one class per image, got "
                         f"{tuple(labels_shape)}")


def check_param_shapes(expected, given):
    """Compare {name: shape} from the module with {name: array} from the caller."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing:
        raise ValueError(f"set_params: missing parameter(s) {missing}; expected {sorted(expected)}")
    if extra:
        raise ValueError(f"set_params: unexpected parameter(s) {extra}; expected {sorted(expected)}")
    for name, shape in sorted(expected.items()):  # the same first mismatch on every backend
        got = tuple(getattr(given[name], "shape", ()))
        if got != tuple(shape):
            raise ValueError(f"set_params: parameter {name!r} has shape {got}, expected {tuple(shape)}")


# --- caches ---------------------------------------------------------------------------


def check_cache(cache_value, batch, num_kv_heads, head_size, window=None):
    """A CausalSelfAttention cache: None or (keys, values), each (b, num_kv_heads, t, head_size);
    with a window w the rolling buffer (keys, values, position), each (b, num_kv_heads, max(w - 1, 1), head_size)."""
    if cache_value is None:
        return
    steps = "t" if window is None else max(window - 1, 1)
    want = f"(batch, num_kv_heads, steps, head_size) = ({batch}, {num_kv_heads}, {steps}, {head_size})"
    size = 2 if window is None else 3
    if not isinstance(cache_value, (tuple, list)) or len(cache_value) != size:
        form = "(keys, values)" if window is None else f"(keys, values, position) (the window {window}'s buffer)"
        raise ValueError(f"cache must be None or a tuple {form}, each of shape {want}")
    k, v = (tuple(c.shape) for c in cache_value[:2])
    for shape in (k, v):
        if len(shape) != 4 or not all(_fits(a, b) for a, b in
                                      zip(shape, (batch, num_kv_heads, k[2] if window is None else steps, head_size))):
            raise ValueError(f"cache must hold keys and values of shape {want}, got {k} and {v}; "
                             "was it made by a layer of another shape?")


def cached_positions(cache_value):
    """How many positions a checked cache has seen: its length, or a rolling buffer's position."""
    if cache_value is None:
        return 0
    return cache_value[2] if len(cache_value) == 3 else cache_value[0].shape[-2]  # (b, kv, t, dh) or (b, t, r)


def check_lm_cache(cache_value, num_layers):
    """A TransformerLM cache: None or a list with one cache per block, its layer's (each layer checks its own)."""
    if cache_value is None:
        return
    if not isinstance(cache_value, (tuple, list)) or len(cache_value) != num_layers:
        got = f"{len(cache_value)} entries" if isinstance(cache_value, (tuple, list)) else type(cache_value).__name__
        raise ValueError(f"cache must be None or a list with one (keys, values) per block ({num_layers}, "
                         f"num_layers), got {got}")


# --- linear attention and the gated delta rule ----------------------------------------

FEATURE_MAPS = ("elu1", "relu")
LINEAR_FORMS = ("chunked", "recurrent", "parallel")
DELTA_FORMS = ("chunked", "recurrent")


def checked_choice(name, value, choices):
    """One of a few named options (a feature map, a form)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_linear_inputs(queries, keys, values, causal):
    """linear_attention: (..., q, d), (..., k, d), (..., k, dv); causal: as many queries as keys."""
    check_block_inputs(queries, keys, values)
    if causal and not _fits(queries[-2], keys[-2]):
        raise ValueError(f"causal linear attention needs one key per query (axis -2), got queries "
                         f"{tuple(queries)} and keys {tuple(keys)}")


def check_gates(queries, alpha, beta):
    """gated_delta_rule: alpha and beta (..., T), one number per position of the queries (..., T, d)."""
    want = tuple(queries[:-1])
    for name, shape in (("alpha", alpha), ("beta", beta)):
        if len(shape) != len(want) or not all(_fits(a, b) for a, b in zip(shape, want)):
            raise ValueError(f"{name} must have shape (..., positions) = {want}, one number per position, "
                             f"got {tuple(shape)}")


def check_decay_values(values):
    """alpha's values (a NumPy array), where they are known (eager calls): decays in (0, 1]."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    low, high = (values.min(), values.max()) if values.size else (1.0, 1.0)
    if not (low > 0 and high <= 1):
        raise ValueError(f"alpha must lie in (0, 1] (the decay of the state per position), got values from "
                         f"{float(low)!r} to {float(high)!r}")


def check_state(name, state, want, what):
    """A recurrent state `name`: an array (or tuple of arrays) of the shapes `want`, each a tuple of sizes."""
    got = state if isinstance(state, (tuple, list)) else (state,)
    shapes = [tuple(getattr(s, "shape", ())) for s in got]
    if len(shapes) != len(want) or not all(
            len(s) == len(w) and all(_fits(a, b) for a, b in zip(s, w)) for s, w in zip(shapes, want)):
        text = ", ".join(str(tuple(w)) for w in want)
        raise ValueError(f"{name} must be None or {what} of shape {text}, got "
                         f"{', '.join(str(s) for s in shapes)}; was it made by inputs of another shape?")




# --- flex attention -------------------------------------------------------------------------


def check_mod(name, mod, what):
    """A score_mod / mask_mod: None or a function (a mask_mod may be a BlockMask from block_mask)."""
    if mod is not None and not callable(mod):
        raise TypeError(f"{name} must be None or a function {what}, got {type(mod).__name__}")


def check_mask_mod_result(dtype):
    if str(dtype) != "bool":
        raise TypeError(f"mask_mod must return booleans (True = may attend), got {dtype}")


def block_mask_mismatch(got, got_axes, want, want_axes):
    return (f"block_mask was built for (num_queries, num_keys, block_size) = {got} and (batch, heads) = "
            f"{got_axes}, but the call has {want} and {want_axes} (batch and heads may also be 1)")


def checked_document_ids(shape):
    """document_mask: per-token document ids, (k,) or (b, k)."""
    if len(shape) not in (1, 2):
        raise ValueError(f"document_ids must have shape (positions,) or (batch, positions), got {tuple(shape)}")


def checked_nonnegative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def checked_flex_call(queries, keys, values, score_mod, mask_mod, block_size):
    """flex_attention's arguments (the shapes of its arrays); returns the block size."""
    check_block_inputs(queries, keys, values)
    check_mod("score_mod", score_mod, "(score, b, h, q_idx, kv_idx) -> score")
    check_mod("mask_mod", mask_mod, "(b, h, q_idx, kv_idx) -> bool, or a BlockMask")
    return checked_positive_int("block_size", block_size)


def checked_block_mask(mask_mod, num_queries, num_keys, block_size, batch_size, num_heads):
    """block_mask's arguments: ((num_queries, num_keys), block_size, (batch_size, num_heads))."""
    check_mod("mask_mod", mask_mod, "(b, h, q_idx, kv_idx) -> bool")
    sizes = (checked_nonnegative_int("num_queries", num_queries), checked_nonnegative_int("num_keys", num_keys))
    return (sizes, checked_positive_int("block_size", block_size),
            (checked_positive_int("batch_size", batch_size), checked_positive_int("num_heads", num_heads)))
# --- open-model attention options -----------------------------------------------------

# RoPE scalings: {type: (required fields, optional fields)}, as Hugging Face's configs name them.
ROPE_SCALINGS = {
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate")),
}


def checked_rope_scaling(scaling):
    """None or {"type": "llama3" | "yarn", field: number, ...} -> (type, {field: value}) with every
    required field present, no unknown one, and every number positive (truncate: a bool)."""
    if not isinstance(scaling, dict) or scaling.get("type") not in ROPE_SCALINGS:
        kinds = ", ".join(repr(k) for k in ROPE_SCALINGS)
        got = scaling.get("type") if isinstance(scaling, dict) else scaling
        raise ValueError(f"scaling must be None or a dict with 'type' one of {kinds}, got {got!r}")
    kind = scaling["type"]
    required, optional = ROPE_SCALINGS[kind]
    fields = {k: v for k, v in scaling.items() if k != "type"}
    missing, unknown = [k for k in required if k not in fields], sorted(set(fields) - set(required) - set(optional))
    if missing or unknown:
        raise ValueError(f"scaling of type {kind!r} needs the fields {list(required)} (optional: {list(optional)}), "
                         f"got {'missing ' + str(missing) if missing else 'unknown ' + str(unknown)}")
    return kind, {k: v if k == "truncate" else checked_positive_number(f"scaling[{k!r}]", v)
                  for k, v in fields.items() if v is not None}


def checked_rope_fraction(head_size, fraction):
    """The number of features each head rotates: fraction * head_size, a positive even count."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"rope_fraction must be a number in (0, 1], got {fraction!r}")
    if fraction == 1:
        return checked_head_size(head_size)                      # all of them: an even head_size
    count = fraction * head_size
    if count != int(count) or int(count) % 2:
        raise ValueError(f"rope_fraction * head_size must be an even whole number of features (rotary encoding "
                         f"rotates pairs), got {fraction!r} * {head_size} = {count:g}")
    return int(count)


def checked_logit_cap(value):
    """None (no soft-capping) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"logit_cap must be None or a positive number (scores become cap * tanh(scores / cap)), "
                         f"got {value!r}")
    return float(value)


def check_sinks(sinks_shape, scores_shape):
    """One sink logit per row of scores: sinks broadcast to the scores' shape without the keys axis."""
    if not _broadcasts(sinks_shape, tuple(scores_shape)[:-1]):
        raise ValueError(f"sinks of shape {tuple(sinks_shape)} do not broadcast to the scores' rows "
                         f"{tuple(scores_shape)[:-1]} (one sink logit per query row)")


# --- multi-head latent attention -----------------------------------------------------------


def checked_latent_sizes(num_hiddens, num_heads, kv_lora_rank, q_lora_rank, qk_nope_head_size,
                         qk_rope_head_size, v_head_size):
    """MultiHeadLatentAttention's sizes: positive integers, an even rotary part (it rotates pairs),
    and ranks that fit: a low-rank factor of an (in, out) map has rank at most min(in, out).
    Returns {name: int} (q_lora_rank None where there is no query compression)."""
    sizes = {name: checked_positive_int(name, value) for name, value in (
        ("num_hiddens", num_hiddens), ("num_heads", num_heads), ("kv_lora_rank", kv_lora_rank),
        ("qk_nope_head_size", qk_nope_head_size), ("qk_rope_head_size", qk_rope_head_size),
        ("v_head_size", v_head_size))}
    sizes["q_lora_rank"] = None if q_lora_rank is None else checked_positive_int("q_lora_rank", q_lora_rank)
    if sizes["qk_rope_head_size"] % 2:
        raise ValueError("qk_rope_head_size must be even (rotary encoding rotates pairs of features), "
                         f"got {qk_rope_head_size}")
    h, heads = sizes["num_hiddens"], sizes["num_heads"]
    limits = {"kv_lora_rank": (min(h, heads * (sizes["qk_nope_head_size"] + sizes["v_head_size"])),
                               "min(num_hiddens, num_heads * (qk_nope_head_size + v_head_size))"),
              "q_lora_rank": (min(h, heads * (sizes["qk_nope_head_size"] + sizes["qk_rope_head_size"])),
                              "min(num_hiddens, num_heads * (qk_nope_head_size + qk_rope_head_size))")}
    for name, (limit, formula) in limits.items():
        if sizes[name] is not None and sizes[name] > limit:
            raise ValueError(f"{name} must be at most {formula} = {limit} (the rank of a low-rank factor of "
                             f"that map), got {sizes[name]}")
    return sizes


def check_latent_cache(cache_value, batch, kv_lora_rank, qk_rope_head_size):
    """A MultiHeadLatentAttention cache: None or (latents (b, t, kv_lora_rank), rotary keys
    (b, t, qk_rope_head_size))."""
    if cache_value is None:
        return
    want = f"({batch}, t, {kv_lora_rank}) and ({batch}, t, {qk_rope_head_size})"
    if not isinstance(cache_value, (tuple, list)) or len(cache_value) != 2:
        raise ValueError(f"cache must be None or a tuple (latents, rotary keys) of shapes {want}")
    c, k = (tuple(x.shape) for x in cache_value)
    if not (len(c) == len(k) == 3 and all(_fits(a, b) for a, b in zip(c, (batch, k[1], kv_lora_rank)))
            and all(_fits(a, b) for a, b in zip(k, (batch, c[1], qk_rope_head_size)))):
        raise ValueError(f"cache must hold latents and rotary keys of shapes {want}, got {c} and {k}; "
                         "was it made by a layer of another shape?")


def checked_beam_size(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"beam_size must be an integer >= 1 (1 is greedy decoding), got {value!r}")
    return int(value)


def checked_length_penalty(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"length_penalty must be a number >= 0 (0: no normalization), got {value!r}")
    return float(value)


def check_seq2seq_parts(sizes, encoder, decoder):
    """Seq2Seq takes either its sizes (Bahdanau's GRU model) or an encoder and a decoder, not both."""
    if (encoder is None) != (decoder is None):
        raise ValueError("Seq2Seq: give both encoder and decoder, or neither (then the sizes build Bahdanau's model)")
    if encoder is not None and any(size is not None for size in sizes.values()):
        given = ", ".join(name for name, size in sizes.items() if size is not None)
        raise ValueError(f"Seq2Seq: with an encoder and a decoder, the sizes must be left out, got {given}")


def checked_offset(value):
    """The position of a sequence's first step: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"offset must be an integer >= 0 (the position of the first step), got {value!r}")
    return int(value)
