"""TensorFlow and Keras' own ways (see tests/adapters/__init__.py)."""

import functools
import os
import tempfile

import keras
import tensorflow as tf


def call_in_mode(module, train, *inputs, **kwargs):
    # Keras passes the enclosing layer's `training` on to a layer called without one.
    class Enclosing(keras.layers.Layer):
        def call(self, *inputs, training=None, **kwargs):
            return module(*inputs, **kwargs)

    return Enclosing()(*inputs, training=train, **kwargs)


def array(values):
    return tf.constant(values)  # int32 for integers


def stop_gradient(x):
    return tf.stop_gradient(x)


def _closure(transform):
    """A transformation of the closure over the module, as a TensorFlow tutorial writes it."""
    return lambda fn, module: transform(functools.partial(fn, module))


def _tape(fn):
    """tf.GradientTape's gradients of fn (a scalar) with respect to every argument."""
    def grads(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = fn(*xs)
        return tape.gradient(value, xs)

    return grads


def _vectorized_map(fn):
    """tf.vectorized_map over the leading axis of every argument."""
    return lambda *xs: tf.vectorized_map(lambda args: fn(*args), xs)


def _configs(model):
    """(class, config without the generated name) of every layer in `model`, nested ones too: a
    layer rebuilt with other settings (a dropout rate left out of its config) shows here, where
    outputs at inference would not."""
    return [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
            for layer in model._flatten_layers(include_self=False)]


def _saved_and_loaded(fn, module):
    """fn(module, *inputs) as a keras.Model on keras.Input's (batch size unknown), saved to a .keras
    file and loaded back; the loaded model runs on the arrays. A layer class the tests derive from
    a d2lattn one (a call that feeds pieces, returns a flat tuple) registers under "tests"."""
    def run(*xs):
        inputs = [keras.Input(shape=x.shape[1:], dtype=x.dtype) for x in xs]
        model = keras.Model(inputs, fn(module, *inputs))
        for layer in model._flatten_layers(include_self=False):
            if not type(layer).__module__.startswith(("d2lattn.", "keras.")):
                keras.saving.register_keras_serializable(package="tests")(type(layer))
        with tempfile.TemporaryDirectory() as folder:
            model.save(os.path.join(folder, "model.keras"))
            loaded = keras.models.load_model(os.path.join(folder, "model.keras"))
        assert _configs(loaded) == _configs(model), "the loaded model's layers are made with other settings"
        return loaded(list(xs))

    return run


def transforms():
    return {
        "tf.function": ("compiled", _closure(tf.function)),
        "tf.function(jit_compile=True)": ("compiled", _closure(functools.partial(tf.function, jit_compile=True))),
        "tf.vectorized_map": ("vmap", _closure(_vectorized_map)),
        "tf.GradientTape": ("autodiff", _closure(_tape)),
        "tf.function(tf.GradientTape)": ("autodiff", _closure(lambda fn: tf.function(_tape(fn)))),
        "keras.Model .keras round trip": ("container", _saved_and_loaded),
    }
