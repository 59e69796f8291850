"""Argument checks shared by every backend, so bad input meets the same message everywhere.

They look only at Python numbers and shape tuples, which every framework
exposes the same way (static shapes, even while tracing).
"""

import numbers


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def dropout_rate(value, name="dropout"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def divisible(num_hiddens, num_heads):
    if num_hiddens % num_heads:
        raise ValueError(
            f"num_hiddens ({num_hiddens}) must be divisible by num_heads ({num_heads})"
        )


def param_shapes(expected, given):
    """Compare {name: shape} from the module with {name: array} from the caller."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing:
        raise ValueError(f"set_params: missing parameter(s) {missing}; expected {sorted(expected)}")
    if extra:
        raise ValueError(f"set_params: unexpected parameter(s) {extra}; expected {sorted(expected)}")
    for name, shape in expected.items():
        got = tuple(getattr(given[name], "shape", ()))
        if got != tuple(shape):
            raise ValueError(f"set_params: parameter {name!r} has shape {got}, expected {tuple(shape)}")


def _fits(got, want):
    """Equal sizes, where None (unknown while tracing) matches anything."""
    return got is None or want is None or got == want


def lens_view(lens_shape, scores_shape):
    """Where `valid_lens` lines up with the scores, as a shape to reshape it to.

    (b,) -> (b, 1, ..., 1) applies to every query of a sequence;
    (b, q) -> (b, 1, ..., q, 1) gives each query its own length.
    """
    lens_shape, scores_shape = tuple(lens_shape), tuple(scores_shape)
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
