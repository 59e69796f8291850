"""Tensor helpers, the Keras layer every module builds on, and the masked softmax in TensorFlow."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from d2lattn import _checks

# --- tensor helpers ----------------------------------------------------------


def tensor(data, dtype=None):
    x = data if tf.is_tensor(data) else tf.convert_to_tensor(np.asarray(data))
    if dtype is not None:
        return tf.cast(x, tf.as_dtype(dtype))
    return tf.cast(x, tf.float32) if x.dtype.is_floating else x


def to_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def ones(shape):
    return tf.ones(shape)


def zeros(shape):
    return tf.zeros(shape)


def arange(start, stop=None, step=1):
    x = np.arange(start, stop, step)
    return tensor(x if x.dtype.kind == "f" else x.astype(np.int32))


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    return tensor(np.random.default_rng(seed).normal(mean, std, shape))


def bmm(a, b):
    return tf.linalg.matmul(a, b)


def matmul(a, b):
    return tf.linalg.matmul(a, b)


def reshape(x, shape):
    return tf.reshape(x, tuple(shape))


def concat(xs, axis=0):
    return tf.concat(list(xs), axis)


def stack(xs, axis=0):
    return tf.stack(list(xs), axis)


def swapaxes(x, axis1, axis2):
    perm = list(range(len(x.shape)))
    perm[axis1], perm[axis2] = perm[axis2], perm[axis1]
    return tf.transpose(x, perm)


def exp(x):
    return tf.exp(x)


def tanh(x):
    return tf.tanh(x)

# --- Keras layers --------------------------------------------------------------


class _Layer(keras.layers.Layer):
    """A Keras layer that Keras saves and loads by its constructor's arguments.

    `get_config` holds the arguments the layer was made with (and Keras' own name,
    trainable and dtype); `from_config` calls the constructor with them, so the layers
    it holds are made again by their own constructors, and a `.keras` file stores each
    weight once, in its weights file. Every subclass defined in d2lattn is registered as
    "d2lattn>ClassName", the name `keras.models.load_model` looks it up by (your own
    subclass registers under your package, as any Keras layer does).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("d2lattn."):
            keras.saving.register_keras_serializable(package="d2lattn")(cls)

    def __new__(cls, *args, **kwargs):
        layer = super().__new__(cls, *args, **kwargs)
        try:
            bound = inspect.signature(cls.__init__).bind(layer, *args, **kwargs)  # the outermost constructor's
        except TypeError:  # made without arguments (copy.deepcopy): the attributes copied next hold them
            return layer
        bound.apply_defaults()
        layer._arguments = dict(list(bound.arguments.items())[1:])           # without self
        return layer

    def get_config(self):
        # as the .keras file's JSON stores it: a tuple argument (an image size) comes back a list
        arguments = {k: list(v) if isinstance(v, tuple) else v for k, v in self._arguments.items()}
        return {**super().get_config(), **arguments}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name, trainable = config.pop("name", None), config.pop("trainable", True)
        config.pop("dtype", None)                                           # float32 throughout
        layer = cls(**config)
        layer.trainable = trainable
        if name is not None:
            layer.name = name
        return layer


class _RecordedWeights:
    """`.attention_weights` of the layers that compute them: what the last call recorded.

    A call traced inside a tf.function records a graph tensor that only that trace can
    use (a parent layer in the same trace reads it, e.g. to return it): read from
    outside, `.attention_weights` are those of the last eager call (None before one),
    so a tf.function of your own returns them as an output to see its weights.
    """

    def __set_name__(self, owner, name):
        self.slot = f"_{name}"

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        recorded, eager = layer.__dict__.get(self.slot, (None, None))
        return eager if tf.executing_eagerly() and tf.is_symbolic_tensor(recorded) else recorded

    def __set__(self, layer, weights):
        eager = layer.__dict__.get(self.slot, (None, None))[1] if tf.is_symbolic_tensor(weights) else weights
        layer.__dict__[self.slot] = (weights, eager)   # past Keras' attribute tracking: tensors, not state


def _records_weights(layer):
    """Whether `layer` records its own `.attention_weights` (rather than reading a child's)."""
    return isinstance(getattr(type(layer), "attention_weights", None), _RecordedWeights)


# --- masking -------------------------------------------------------------------


def lengths(valid_lens, scores_shape):
    """`valid_lens` as int32 shaped to broadcast against scores (b, ..., q, k); sizes may be None."""
    lens = tf.convert_to_tensor(valid_lens)
    lens = tf.reshape(lens, _checks.lens_view(lens.shape, scores_shape, lens.dtype))  # (b, 1.., 1) or (b, 1.., q, 1)
    if tf.executing_eagerly():  # values are unknown while tracing
        _checks.check_lens_values(lens.numpy())                   # whole numbers, none negative
    return tf.cast(lens, tf.int32)                          # a float length counts like an integer


def keep_mask(scores, valid_lens=None, mask=None):
    """Boolean tensor broadcastable to `scores`: True where a query may attend, or None.

    Under tf.function sizes may be unknown (None in `scores.shape`): the number of
    keys is read at run time, and `lens_view` takes None for any size.
    """
    keep = None
    if valid_lens is not None:
        keep = tf.range(tf.shape(scores)[-1]) < lengths(valid_lens, scores.shape)
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
        _checks.check_mask(mask.shape, scores.shape, mask.dtype)
        keep = mask if keep is None else keep & mask
    return keep


def masked_softmax(X, valid_lens=None, *, mask=None):
    X = tf.convert_to_tensor(X)                                   # (..., q, k), NumPy arrays welcome
    keep = keep_mask(X, valid_lens, mask)
    if keep is None:
        return tf.nn.softmax(X, axis=-1)
    # The lowest finite number, not -inf: an empty row stays finite (uniform)
    # on the way through softmax, and is then zeroed with every masked weight.
    scores = tf.where(keep, X, X.dtype.min)                       # (..., q, k)
    return tf.where(keep, tf.nn.softmax(scores, axis=-1), 0.0)


def causal_mask(num_queries, num_keys=None, *, offset=0, window=None):
    """Sizes and `offset` may be int32 tensors (known only at run time under tf.function)."""
    num_keys = num_queries if num_keys is None else num_keys
    window = _checks.checked_window(window)
    if not tf.is_tensor(offset):
        _checks.checked_integer("offset", offset)
    queries = offset + tf.range(num_queries)[:, None]              # (q, 1): their positions
    keys = tf.range(num_keys)                                      # (k,)
    keep = keys <= queries                                         # (q, k)
    return keep if window is None else keep & (queries - keys < window)
