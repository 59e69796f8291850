"""TensorFlow and Keras' own ways (see tests/adapters/__init__.py)."""

import contextlib
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


def run_left_in_mode(module, train, fn):
    # Keras keeps no mode on a layer: a layer called with training=None takes the `training` of
    # the call it runs inside, so `fn` runs inside an enclosing layer's call.
    result = []

    class Enclosing(keras.layers.Layer):
        def call(self, x, training=None):
            result.append(fn())
            return x

    Enclosing()(tf.zeros(1), training=train)
    return result[0]


@contextlib.contextmanager
def eagerly():
    tf.config.run_functions_eagerly(True)  # tf.functions run in Python, with concrete shapes
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


def transforms():
    def closure(transform):  # over the module, as a TensorFlow tutorial writes it
        return lambda fn, module: transform(functools.partial(fn, module))

    def tape(fn):  # tf.GradientTape's gradients with respect to every argument
        def grads(*xs):
            with tf.GradientTape() as recorded:
                recorded.watch(xs)
                value = fn(*xs)
            return recorded.gradient(value, xs)

        return grads

    def vectorized_map(fn):  # over the leading axis of every argument
        return lambda *xs: tf.vectorized_map(lambda args: fn(*args), xs)

    def configs(model):
        # (class, config but the generated name) of every layer, nested ones too: a layer rebuilt with
        # other settings (a dropout rate left out of its config) shows here, not in outputs at inference.
        return [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
                for layer in model._flatten_layers(include_self=False)]

    def saved_and_loaded(fn, module):
        # fn(module, *inputs) as a keras.Model on keras.Input's (batch size unknown), saved to a .keras
        # file and loaded back; the loaded model runs on the arrays. A class the tests derive from a
        # d2lattn layer registers under "tests" (d2lattn registers its own).
        def run(*xs):
            inputs = [keras.Input(shape=x.shape[1:], dtype=x.dtype) for x in xs]
            model = keras.Model(inputs, fn(module, *inputs))
            for layer in model._flatten_layers(include_self=False):
                if not type(layer).__module__.startswith(("d2lattn.", "keras.")):
                    keras.saving.register_keras_serializable(package="tests")(type(layer))
            with tempfile.TemporaryDirectory() as folder:
                model.save(os.path.join(folder, "model.keras"))
                loaded = keras.models.load_model(os.path.join(folder, "model.keras"))
            assert configs(loaded) == configs(model), "the loaded model's layers are made with other settings"
            return loaded(list(xs))

        return run

    return {
        "tf.function": ("compiled", closure(tf.function)),
        "tf.function(jit_compile=True)": ("compiled", closure(functools.partial(tf.function, jit_compile=True))),
        "tf.vectorized_map": ("vmap", closure(vectorized_map)),
        "tf.GradientTape": ("autodiff", closure(tape)),
        "tf.function(tf.GradientTape)": ("autodiff", closure(lambda fn: tf.function(tape(fn)))),
        "keras.Model .keras round trip": ("container", saved_and_loaded),
    }
