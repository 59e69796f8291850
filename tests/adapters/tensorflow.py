"""TensorFlow and Keras' own ways (see tests/adapters/__init__.py)."""

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
