"""TensorFlow and Keras' own ways (see tests/adapters/__init__.py)."""

import contextlib

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
